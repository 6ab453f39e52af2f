"""The MNIST world the course trains in: the data, captions and attributes read off the pixels, and the classifier that
judges samples (accuracy, prompt adherence, FID). Depends only on :mod:`diffusion_lab.utils`."""
