"""Video generation networks written in our own PyTorch code (no reference package imported)."""
