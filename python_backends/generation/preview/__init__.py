"""Preview engine: animates the photo from the speech by landmark-driven warping (no generative model).

It is the CPU default when no Wan 2.2 weights are present, clearly labelled as such in every output, so the
pipeline downstream (QA, encoding, provenance, delivery) runs on real frames on any machine.
"""

from .engine import ENGINE_NAME, PreviewEngine, PreviewSettings
from .mouth_driver import MouthTrack, mouth_track

__all__ = ["ENGINE_NAME", "MouthTrack", "PreviewEngine", "PreviewSettings", "mouth_track"]
