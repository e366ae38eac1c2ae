from python_backends import spec
from python_backends.content_safety import ContentSafetySettings, build_content_safety
from python_backends.triton_io import BatchedModel


class TritonPythonModel(BatchedModel):
    spec = spec.CONTENT_SAFETY
    settings_type = ContentSafetySettings

    def build(self, settings, device):
        return build_content_safety(settings, device)
