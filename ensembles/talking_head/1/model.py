from functools import partial

from python_backends import spec
from python_backends.pipeline import TalkingHeadSettings, run_talking_head
from python_backends.triton_io import StreamingModel, TritonModelCaller, stream_model


class TritonPythonModel(StreamingModel):
    spec = spec.TALKING_HEAD
    settings_type = TalkingHeadSettings
    reports_segments = True

    def build(self, settings, device):
        self.call_model = TritonModelCaller()

    def stream(self, inputs, parameters, is_cancelled, backlog):
        return run_talking_head(inputs, parameters, self.call_model, partial(stream_model, is_cancelled=is_cancelled),
                                self.settings, backlog)
