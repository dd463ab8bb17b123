"""Model parts: the frozen text encoder (VAE and LayerDiT join it)."""
