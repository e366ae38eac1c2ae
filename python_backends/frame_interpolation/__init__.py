"""Frame-rate conversion by frame interpolation: the Wan engines generate at 16 fps and serve 25 / 30 fps.

Modules: `config` (settings, which method and weights; no torch), `resampler` (the streaming 16 fps -> output
rate stream), `warp` (backward warping shared by both interpolators), `flow` (pyramid optical flow in torch),
`flow_interpolator` (the default without weights: bidirectional flow + occlusion-aware blending), `rife` (the
RIFE 4.26 IFNet) and `rife_checkpoint` (its released flownet.pkl: read, check, load; random ones for tests).
Nothing is imported here, so that reading the settings does not import torch.
"""
