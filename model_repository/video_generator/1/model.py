from python_backends import spec
from python_backends.generation.service import EngineRegistry, VideoGeneratorSettings, generate
from python_backends.triton_io import StreamingModel


class TritonPythonModel(StreamingModel):
    spec = spec.VIDEO_GENERATOR
    settings_type = VideoGeneratorSettings
    max_workers = 2

    def build(self, settings, device):
        self.engines = EngineRegistry(settings, device)
        self.logger.log_info(f"{self.spec.name}: {self.engines.summary()}")

    def stream(self, inputs, parameters, is_cancelled, backlog):
        return generate(self.engines, inputs, parameters)

    def finalize(self):
        super().finalize()  # no request runs after this
        self.engines.streams.close()  # held streams stop their stages and give their GPU state back
