from python_backends import spec
from python_backends.face_embedding import FaceEmbedderSettings, build_face_embedder
from python_backends.triton_io import BatchedModel


class TritonPythonModel(BatchedModel):
    spec = spec.FACE_EMBEDDER
    settings_type = FaceEmbedderSettings

    def build(self, settings, device):
        return build_face_embedder(settings, device)
