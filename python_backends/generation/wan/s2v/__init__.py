"""Wan2.2-S2V-14B (speech-driven): its DiT, engine, the LiveAvatar block-causal variant and sequence parallelism
(upstream wan/speech2video.py and wan/modules/s2v/)."""
