"""Names and shapes of every Triton model and tensor, in one place.

config.pbtxt files, model.py adapters, the client and the tests all import these; a test parses each
config.pbtxt and checks it against this module, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton dtype without the TYPE_ prefix: "UINT8", "FP32", "BYTES", ...
    dims: tuple[int, ...]  # without the batch dimension; -1 is variable
    optional: bool = False


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    decoupled: bool = False

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, self.name)

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, self.name)


def _by_name(tensors: tuple[TensorSpec, ...], name: str, model: str) -> TensorSpec:
    for tensor in tensors:
        if tensor.name == name:
            return tensor
    raise KeyError(f"model {model!r} has no tensor {name!r}")


# Tensor names shared by several models.
IMAGE = "image"  # UINT8 [H, W, 3], RGB
FACE_BOX = "face_box"  # FP32 [4] x1, y1, x2, y2 in pixels
FACE_BOXES = "face_boxes"  # FP32 [N, 4]
FACE_SCORES = "face_scores"  # FP32 [N]
FACE_KEYPOINTS = "face_keypoints"  # FP32 [N, 5, 2]: left eye, right eye, nose, mouth left, mouth right
FACE_COUNT = "face_count"  # INT32 [1]
# FP32 [1]: the longer side of the face box the caller expects, in input pixels (0 = unknown). An engine may skip
# its search for faces far smaller than that (BlazeFace's tiles, MTCNN's smallest pyramid levels); a caller that
# must find small faces (the photo's pre-processing) leaves it out.
EXPECTED_FACE_PX = "expected_face_px"
LANDMARKS = "landmarks"  # FP32 [P, 2]
MOUTH_CONTOUR = "mouth_contour"  # FP32 [n, K, 2]: the outer lip contour per frame (Face Mesh), in pixels
FRAME_INDEX = "frame_index"  # INT64 [n]: each frame's index in the clip (several runs of frames in one request)
HEAD_POSE = "head_pose"  # FP32 [3] yaw, pitch, roll in degrees
EMBEDDING = "embedding"  # FP32 [D], L2-normalised
AUDIO_BYTES = "audio_bytes"  # BYTES [1]: an encoded audio file in any format ffmpeg reads
WAVEFORM = "waveform"  # FP32 [S]: 16 kHz mono, loudness-normalised, denoised
MEL = "mel"  # FP32 [80, T]: log-mel, Wav2Lip / SyncNet convention
WAV2VEC2_FEATURES = "wav2vec2_features"  # FP32 [L, T, D]: hidden states of every layer
AUDIO_REPORT = "audio_report"  # BYTES [1]: JSON with the measurements of the audio
MODEL_INFO = "model_info"  # BYTES [1]: JSON naming the engine and weights that produced the outputs
PHOTO_BYTES = "photo_bytes"  # BYTES [1]: an encoded image file
DRIVING_VIDEO_BYTES = "driving_video_bytes"  # BYTES [1]: an encoded video whose face drives the animation
PREPROCESS_REPORT = "preprocess_report"  # BYTES [1]: JSON report of the pre-processing job
DRIVING_FRAMES = "driving_frames"  # UINT8 [N, H, W, 3]: decoded frames of a driving video
DRIVING_FPS = "driving_fps"  # FP32 [1]: their frame rate
FRAMES = "frames"  # UINT8 [n, H, W, 3]: one streamed chunk of generated video, RGB
START_FRAME = "start_frame"  # INT64 [1]: index of the chunk's first frame in the clip
TOTAL_FRAMES = "total_frames"  # INT64 [1]: the clip's frame count (best estimate until the last chunk)
FPS = "fps"  # FP32 [1]
CHUNK_INFO = "chunk_info"  # BYTES [1]: JSON: engine, weights, timings; the first chunk also carries the job report
MOTION_FRAMES = "motion_frames"  # UINT8 [n, H, W, 3]: the last accepted frames a re-generated segment continues from
FACE_CROPS = "face_crops"  # UINT8 [T, H, W, 3]: one face crop per video frame (resized by the scorer)
SYNC_REPORT = "sync_report"  # BYTES [1]: JSON: AV offset, LSE-D, LSE-C, distance per offset
QA_REPORT = "qa_report"  # BYTES [1]: JSON QA report of a video (python_backends/quality/qa_report.schema.json)
SAFETY_REPORT = "safety_report"  # BYTES [1]: JSON: NSFW, minor-face and public-figure checks, each with a status

_INFO = TensorSpec(MODEL_INFO, "BYTES", (1,))

FACE_DETECTOR = ModelSpec(
    name="face_detector",
    inputs=(TensorSpec(IMAGE, "UINT8", (-1, -1, 3)), TensorSpec(EXPECTED_FACE_PX, "FP32", (1,), optional=True)),
    outputs=(
        TensorSpec(FACE_BOXES, "FP32", (-1, 4)),
        TensorSpec(FACE_SCORES, "FP32", (-1,)),
        TensorSpec(FACE_KEYPOINTS, "FP32", (-1, 5, 2)),
        TensorSpec(FACE_COUNT, "INT32", (1,)),
        _INFO,
    ),
    max_batch_size=16,
)

FACE_LANDMARKS = ModelSpec(
    name="face_landmarks",
    inputs=(TensorSpec(IMAGE, "UINT8", (-1, -1, 3)), TensorSpec(FACE_BOX, "FP32", (4,))),
    outputs=(TensorSpec(LANDMARKS, "FP32", (-1, 2)), TensorSpec(HEAD_POSE, "FP32", (3,)), _INFO),
    max_batch_size=16,
)

FACE_EMBEDDER = ModelSpec(
    name="face_embedder",
    inputs=(
        TensorSpec(IMAGE, "UINT8", (-1, -1, 3)),
        TensorSpec(FACE_BOX, "FP32", (4,)),
        TensorSpec(FACE_KEYPOINTS, "FP32", (5, 2)),
    ),
    outputs=(TensorSpec(EMBEDDING, "FP32", (-1,)), _INFO),
    max_batch_size=16,
)

AUDIO_FEATURES = ModelSpec(
    name="audio_features",
    inputs=(TensorSpec(AUDIO_BYTES, "BYTES", (1,)),),
    outputs=(
        TensorSpec(WAVEFORM, "FP32", (-1,)),
        TensorSpec(MEL, "FP32", (80, -1)),
        TensorSpec(WAV2VEC2_FEATURES, "FP32", (-1, -1, -1)),
        TensorSpec(AUDIO_REPORT, "BYTES", (1,)),
        _INFO,
    ),
    max_batch_size=4,
)

PREPROCESS = ModelSpec(
    name="preprocess",
    inputs=(
        TensorSpec(PHOTO_BYTES, "BYTES", (1,)),
        # Speech (S2V), a driving video (Animate), or both; at least one of the two.
        TensorSpec(AUDIO_BYTES, "BYTES", (1,), optional=True),
        TensorSpec(DRIVING_VIDEO_BYTES, "BYTES", (1,), optional=True),
    ),
    outputs=(TensorSpec(PREPROCESS_REPORT, "BYTES", (1,)),),
    max_batch_size=0,
)

_CHUNK_OUTPUTS = (
    TensorSpec(FRAMES, "UINT8", (-1, -1, -1, 3)),
    TensorSpec(START_FRAME, "INT64", (1,)),
    TensorSpec(TOTAL_FRAMES, "INT64", (1,)),
    TensorSpec(FPS, "FP32", (1,)),
    TensorSpec(CHUNK_INFO, "BYTES", (1,)),
)

# Decoupled models answer a request that has been silent this long with an empty response (no outputs), so a
# client can tell a slow job from a dead server process (python_backends/keepalive.py).
STREAM_KEEPALIVE_S = 5.0
# A stream silent for this long, keep-alives included, has lost the process serving it (twelve missed keep-alives:
# a loaded server may be late with a few). The client's idle timeout and talking_head's wait on its callees.
STREAM_SILENCE_S = 12 * STREAM_KEEPALIVE_S

# Decoupled: one response per chunk of frames, then an empty final response. Per-request knobs (engine, seed,
# steps, guidance, width, height, fps, max_duration_s, chunk_frames, prompt) travel as request parameters.
VIDEO_GENERATOR = ModelSpec(
    name="video_generator",
    inputs=(
        TensorSpec(IMAGE, "UINT8", (-1, -1, 3)),
        TensorSpec(FACE_BOX, "FP32", (4,), optional=True),
        TensorSpec(LANDMARKS, "FP32", (-1, 2), optional=True),
        TensorSpec(EMBEDDING, "FP32", (-1,), optional=True),
        TensorSpec(WAVEFORM, "FP32", (-1,), optional=True),
        TensorSpec(WAV2VEC2_FEATURES, "FP32", (-1, -1, -1), optional=True),
        TensorSpec(DRIVING_FRAMES, "UINT8", (-1, -1, -1, 3), optional=True),
        TensorSpec(DRIVING_FPS, "FP32", (1,), optional=True),
        TensorSpec(MOTION_FRAMES, "UINT8", (-1, -1, -1, 3), optional=True),
    ),
    outputs=_CHUNK_OUTPUTS,
    max_batch_size=0,
    decoupled=True,
)

# SyncNet scoring of one clip (syncnet_v2 layout): face crops at 25 fps with the matching 16 kHz speech.
LIPSYNC_SCORER = ModelSpec(
    name="lipsync_scorer",
    inputs=(
        TensorSpec(FACE_CROPS, "UINT8", (-1, -1, -1, 3)),
        TensorSpec(WAVEFORM, "FP32", (-1,)),
        TensorSpec(FPS, "FP32", (1,)),
    ),
    outputs=(TensorSpec(SYNC_REPORT, "BYTES", (1,)), _INFO),
    max_batch_size=1,
)

# NSFW score of any image; with a face (box, keypoints, embedding) also the minor-face estimate and the match
# against the operator's public-figure gallery.
CONTENT_SAFETY = ModelSpec(
    name="content_safety",
    inputs=(
        TensorSpec(IMAGE, "UINT8", (-1, -1, 3)),
        TensorSpec(FACE_BOX, "FP32", (4,), optional=True),
        TensorSpec(FACE_KEYPOINTS, "FP32", (5, 2), optional=True),
        TensorSpec(EMBEDDING, "FP32", (-1,), optional=True),
    ),
    outputs=(TensorSpec(SAFETY_REPORT, "BYTES", (1,)), _INFO),
    max_batch_size=8,
)

# Wav2Lip mouth pass over a run of frames: per-frame face boxes, the clip's 80-bin mel and where the run starts.
MOUTH_REFINER = ModelSpec(
    name="mouth_refiner",
    inputs=(
        TensorSpec(FRAMES, "UINT8", (-1, -1, -1, 3)),
        TensorSpec(FACE_BOXES, "FP32", (-1, 4)),
        TensorSpec(MEL, "FP32", (80, -1)),
        TensorSpec(START_FRAME, "INT64", (1,)),
        TensorSpec(FPS, "FP32", (1,)),
        TensorSpec(MOUTH_CONTOUR, "FP32", (-1, -1, 2), optional=True),
        TensorSpec(FRAME_INDEX, "INT64", (-1,), optional=True),
    ),
    outputs=(TensorSpec(FRAMES, "UINT8", (-1, -1, -1, 3)), _INFO),
    max_batch_size=1,
)

# The pipeline a client calls: validate + pre-process, then generate, streaming chunks back as they arrive.
TALKING_HEAD = ModelSpec(
    name="talking_head",
    inputs=PREPROCESS.inputs,
    outputs=_CHUNK_OUTPUTS,
    max_batch_size=0,
    decoupled=True,
)

# The quality gates over a given video (the same as talking_head runs on every generated segment): the photo it
# must show, the speech it must match, and its frames.
VIDEO_QA = ModelSpec(
    name="video_qa",
    inputs=(
        TensorSpec(PHOTO_BYTES, "BYTES", (1,)),
        TensorSpec(AUDIO_BYTES, "BYTES", (1,)),
        TensorSpec(FRAMES, "UINT8", (-1, -1, -1, 3)),
        TensorSpec(FPS, "FP32", (1,)),
    ),
    outputs=(TensorSpec(QA_REPORT, "BYTES", (1,)),),
    max_batch_size=0,
)

# model_repository/ holds the models; ensembles/ holds the orchestrators that call them through BLS.
REPOSITORY_MODELS: tuple[ModelSpec, ...] = (
    FACE_DETECTOR, FACE_LANDMARKS, FACE_EMBEDDER, AUDIO_FEATURES, VIDEO_GENERATOR, LIPSYNC_SCORER, CONTENT_SAFETY,
    MOUTH_REFINER,
)
ENSEMBLE_MODELS: tuple[ModelSpec, ...] = (PREPROCESS, TALKING_HEAD, VIDEO_QA)
ALL_MODELS: dict[str, ModelSpec] = {m.name: m for m in REPOSITORY_MODELS + ENSEMBLE_MODELS}
