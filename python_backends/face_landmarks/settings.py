"""Settings of the face_landmarks model, filled from config.pbtxt `parameters`."""

from __future__ import annotations

from dataclasses import dataclass

from ..licences import LicencePolicy
from ..mediapipe_models import pool

AUTO = "auto"
HRNET = "hrnet"  # official HRNetV2-W18 checkpoint under the weights root
DLIB = "dlib"  # shipped dlib 68-point shape predictor (non-commercial: iBUG 300-W)
MEDIAPIPE = "mediapipe"  # MediaPipe Face Mesh, 468 points, from the mediapipe wheel's .tflite (Apache-2.0)
ENGINES = (AUTO, HRNET, MEDIAPIPE, DLIB)

WFLW = "wflw"  # HR18-WFLW.pth, 98 points
W300 = "300w"  # HR18-300W.pth, 68 points
DATASETS = (AUTO, WFLW, W300)

LINE_OF_SIGHT = "line_of_sight"
CAMERA_AXIS = "camera_axis"
POSE_REFERENCES = (LINE_OF_SIGHT, CAMERA_AXIS)

TORCH = "torch"  # HRNet forward in this process
TRITON = "triton"  # HRNet forward in its own Triton model (ONNX Runtime / TensorRT), called through BLS
RUNTIMES = (TORCH, TRITON)


@dataclass(frozen=True)
class FaceLandmarksSettings:
    # auto: an official HRNet checkpoint if the weights root has one, else MediaPipe Face Mesh, else dlib.
    engine: str = AUTO
    # Face Mesh: re-crops around the previous pass's mesh (MediaPipe's tracking ROI); 0 = the box's square only.
    mesh_refine: int = 1
    # Which official checkpoint HRNet uses; auto prefers WFLW (98 points) over 300W (68 points).
    hrnet_dataset: str = AUTO
    # HRNet crop: the box's longer side times this (the official 1.25 enlargement of the face scale).
    crop_scale: float = 1.25
    # Head pose camera: focal length = focal_scale * image width, principal point at the image centre.
    focal_scale: float = 1.0
    # Angles measured from the camera -> head line of sight (frontal = looking into the lens) or the axis.
    pose_reference: str = LINE_OF_SIGHT
    # CPU threads for torch (0 = torch's default).
    threads: int = 0
    # Face Mesh: the boxes of one request in parallel on this many TFLite interpreters (1 = one after another).
    mediapipe_threads: int = 1
    # HRNet forward: torch here, or triton (the exported network served as `network_model`).
    runtime: str = TORCH
    network_model: str = "face_landmarks_net"
    licence: LicencePolicy = LicencePolicy()  # config.pbtxt key `commercial` (licences.py)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {self.engine!r}")
        if self.hrnet_dataset not in DATASETS:
            raise ValueError(f"hrnet_dataset must be one of {list(DATASETS)}, got {self.hrnet_dataset!r}")
        if self.pose_reference not in POSE_REFERENCES:
            raise ValueError(
                f"pose_reference must be one of {list(POSE_REFERENCES)}, got {self.pose_reference!r}"
            )
        if not 0.5 <= self.crop_scale <= 4.0:
            raise ValueError(f"crop_scale must be within [0.5, 4], got {self.crop_scale}")
        if not 0.1 <= self.focal_scale <= 20.0:
            raise ValueError(f"focal_scale must be within [0.1, 20], got {self.focal_scale}")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        if not 1 <= self.mediapipe_threads <= pool.MAX_SIZE:
            raise ValueError(f"mediapipe_threads must be 1 (one box after another) to {pool.MAX_SIZE} (parallel "
                             f"Face Mesh interpreters), got {self.mediapipe_threads}")
        if not 0 <= self.mesh_refine <= 3:
            raise ValueError(f"mesh_refine must be within [0, 3], got {self.mesh_refine}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {list(RUNTIMES)}, got {self.runtime!r}")
        if self.runtime == TRITON and self.engine == DLIB:
            raise ValueError("runtime 'triton' serves the HRNet export; set engine to auto or hrnet")
