import json

import numpy as np

from python_backends import spec
from python_backends.pipeline import TalkingHeadSettings, run_video_qa
from python_backends.triton_io import OrchestratorModel


class TritonPythonModel(OrchestratorModel):
    spec = spec.VIDEO_QA
    settings_type = TalkingHeadSettings

    async def handle(self, inputs):
        report = await run_video_qa(inputs, self.call_model, self.settings)
        return {spec.QA_REPORT: np.array([json.dumps(report).encode()], dtype=np.object_)}
