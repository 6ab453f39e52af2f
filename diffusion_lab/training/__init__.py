"""Layer 5: the loss, the training loop and its helpers, the recipes that train the course's models, fine-tuning,
model surgery and scale-out (``python -m diffusion_lab.training.train``)."""
