"""Input validation: decode the photo, and apply the upload, face, pose, speech and video policies.

Every refusal is an errors.InputError whose message says what is wrong (with the measured value and the
limit) and what to upload instead, and whose `code` is a stable machine-readable reason.
"""

from .audio_checks import REPORT_KEYS, check_audio, check_audio_upload
from .image_io import ACCEPTED_FORMATS, decode_image, encode_png
from .limits import MULTI_FACE_POLICIES, ValidationLimits
from .photo_checks import NO_FACE_MESSAGE, check_pose, select_face
from .video_checks import VideoInfo, probe_video, read_frames

__all__ = [
    "ACCEPTED_FORMATS",
    "MULTI_FACE_POLICIES",
    "NO_FACE_MESSAGE",
    "REPORT_KEYS",
    "ValidationLimits",
    "VideoInfo",
    "check_audio",
    "check_audio_upload",
    "check_pose",
    "decode_image",
    "encode_png",
    "probe_video",
    "read_frames",
    "select_face",
]
