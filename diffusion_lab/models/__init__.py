"""Layer 3, the networks, written block by block: U-Net, MMDiT, the latent autoencoder, the text encoder, ControlNet
and the image embedding of variations. Models hold no schedule."""
