from python_backends import spec
from python_backends.face_landmarks import FaceLandmarksSettings, build_face_landmarks
from python_backends.triton_io import BatchedModel


class TritonPythonModel(BatchedModel):
    spec = spec.FACE_LANDMARKS
    settings_type = FaceLandmarksSettings

    def build(self, settings, device):
        return build_face_landmarks(settings, device)
