"""Model and gate logic for talkinghead. Nothing here imports Triton except triton_io."""

__version__ = "0.1.0"
