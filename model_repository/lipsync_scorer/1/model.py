from python_backends import spec
from python_backends.lipsync_scorer.scorer import LipSyncScorerSettings, build_lipsync_scorer
from python_backends.triton_io import BatchedModel


class TritonPythonModel(BatchedModel):
    spec = spec.LIPSYNC_SCORER
    settings_type = LipSyncScorerSettings

    def build(self, settings, device):
        return build_lipsync_scorer(settings, device)
