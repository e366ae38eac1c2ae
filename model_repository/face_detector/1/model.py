from python_backends import spec
from python_backends.face_detection import FaceDetectorSettings, build_face_detector
from python_backends.triton_io import BatchedModel


class TritonPythonModel(BatchedModel):
    spec = spec.FACE_DETECTOR
    settings_type = FaceDetectorSettings

    def build(self, settings, device):
        return build_face_detector(settings, device)
