"""What the Wan2.2 S2V-14B and Animate-14B engines share: the DiT blocks, VAE, umT5, attention kernels, FP8,
LoRA merging, samplers and the release-folder checkpoint layout (as wan/modules/ and wan/configs/ upstream)."""
