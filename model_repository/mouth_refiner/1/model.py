from python_backends import spec
from python_backends.mouth_refiner import MouthRefinerSettings, build_mouth_refiner
from python_backends.triton_io import BatchedModel


class TritonPythonModel(BatchedModel):
    spec = spec.MOUTH_REFINER
    settings_type = MouthRefinerSettings

    def build(self, settings, device):
        return build_mouth_refiner(settings, device)
