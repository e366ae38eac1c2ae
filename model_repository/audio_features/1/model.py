from python_backends import spec
from python_backends.audio import AudioFeaturesSettings, build_audio_features
from python_backends.triton_io import BatchedModel


class TritonPythonModel(BatchedModel):
    spec = spec.AUDIO_FEATURES
    settings_type = AudioFeaturesSettings

    def build(self, settings, device):
        return build_audio_features(settings, device)
