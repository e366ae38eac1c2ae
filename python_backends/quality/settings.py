"""Every quality-gate threshold and post-processing policy of the talking_head orchestrator, in one place.

The talking_head config.pbtxt `parameters` fill these (flat keys, see python_backends/settings.py); the defaults
are explained where they are set, with their source.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..face_embedding import DLIB_SAME_PERSON_COSINE
from ..lipsync_scorer.lipsync import LipSyncGateSettings


@dataclass(frozen=True)
class QualitySettings:
    # --- segments and re-rolls ----------------------------------------------------------------------
    # The unit that is generated, judged and re-rolled: 5 s is one Wan S2V clip (80 frames at 16 fps) and one
    # identity window, so a re-roll regenerates exactly one clip.
    segment_s: float = 5.0
    # Re-generations of a failing segment with a new seed (continuing from the accepted frames) before the
    # best attempt is kept and the job is flagged for human review.
    max_rerolls: int = 2
    # Frames of the accepted video handed to the generator when it continues a segment (Wan S2V uses the last
    # 73 at 16 fps, 4.6 s: 5 s at any output rate covers them).
    motion_context_s: float = 5.0

    # --- face tracking ------------------------------------------------------------------------------
    # Run the detector on every n-th frame (boxes are interpolated between): a talking head moves little in
    # 0.4 s, and detection is the costliest per-frame model on CPU.
    detect_every: int = 10

    # --- identity -------------------------------------------------------------------------------------
    identity_window_s: float = 5.0
    # ArcFace cosine of frames vs the photo: 0.7 is far above insightface's verification operating points
    # (~0.3-0.4 between different people) yet below the 0.8-0.9 that re-encoded frames of one face reach.
    identity_threshold_arcface: float = 0.7
    # dlib's 128-d model: its documented same-person distance 0.6 as a cosine (face_embedding.dlib_embedder).
    identity_threshold_dlib: float = round(DLIB_SAME_PERSON_COSINE, 4)

    # --- lip sync: SyncNet when supplied (its thresholds are lipsync_scorer's), else mouth opening vs envelope
    max_abs_offset_frames: int = LipSyncGateSettings.max_abs_offset_frames
    sync_vshift: int = LipSyncGateSettings.vshift
    # Envelope judge: mouth opening must follow the speech at r >= this at the best offset. Natural talkers
    # reach 0.1-0.5 (Chandrasekaran 2009); 0.2 fails a mouth that does not follow the speech at all.
    min_envelope_r: float = 0.2

    # --- temporal coherence and artifacts (python_backends/qa_metrics explains each default) ---------------
    flicker_spike_k: float = 5.0
    flicker_luma_floor: float = 3.0
    flicker_warp_floor: float = 8.0
    jaw_floor: float = 0.08
    jaw_spike_k: float = 5.0
    eye_line_deg: float = 8.0
    eye_axis_deg: float = 10.0
    eye_spacing: float = 0.10
    edge_max_log_ratio: float = 0.405
    # Frames per second checked for edge bleeding (it warps each frame into the photo's geometry).
    edge_samples_per_s: float = 5.0

    # --- content safety -------------------------------------------------------------------------------
    # Generated frames checked for NSFW per second of video (the photo itself is always checked first).
    safety_samples_per_s: float = 1.0

    # --- requests -------------------------------------------------------------------------------------------
    # Frames per request to face_detector, face_landmarks and face_embedder: at most their max_batch_size (16 in
    # the CPU configs; the GPU profile serves 160, so a 5 s segment goes in one request per model).
    request_frames: int = 16

    # --- post-processing ------------------------------------------------------------------------------
    # Match each segment's colour statistics (Lab mean/std of the face region) to the photo's: diffusion
    # models drift in tint from clip to clip, which shows as a colour jump at segment seams.
    colour_match: bool = True
    # Wav2Lip mouth pass on runs of plosives (p, b, t, d, k, g) and on segments whose lip-sync fails.
    refine_plosives: bool = True
    refine_low_sync: bool = True

    def __post_init__(self) -> None:
        if self.segment_s <= 0 or self.identity_window_s <= 0 or self.motion_context_s < 0:
            raise ConfigError("segment_s and identity_window_s must be positive, motion_context_s >= 0")
        if self.max_rerolls < 0 or self.detect_every < 1 or self.request_frames < 1:
            raise ConfigError("max_rerolls must be >= 0, detect_every and request_frames >= 1")
        if not (0 < self.identity_threshold_arcface <= 1 and 0 < self.identity_threshold_dlib <= 1):
            raise ConfigError("identity thresholds are cosines in (0, 1]")
        if self.safety_samples_per_s <= 0 or self.edge_samples_per_s <= 0:
            raise ConfigError("safety_samples_per_s and edge_samples_per_s must be positive")
        if not 0 <= self.max_abs_offset_frames < self.sync_vshift:
            raise ConfigError("max_abs_offset_frames must be in [0, sync_vshift)")

    def identity_threshold(self, embedder_engine: str) -> float:
        return self.identity_threshold_dlib if "dlib" in embedder_engine else self.identity_threshold_arcface
