"""Wan2.2-Animate-14B (driving-video-driven): its DiT, face and pose conditioning, CLIP vision tower and engine
(upstream wan/animate.py and wan/modules/animate/)."""
