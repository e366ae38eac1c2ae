"""Face detection: RetinaFace (official checkpoints, torch or onnxruntime) or MTCNN (shipped weights)."""

from .detector import FaceDetector, FaceDetectorSettings, build_face_detector, choose_weights, detection_size
from .faces import Faces
from .onnx_export import export_onnx

__all__ = [
    "FaceDetector",
    "FaceDetectorSettings",
    "Faces",
    "build_face_detector",
    "choose_weights",
    "detection_size",
    "export_onnx",
]
