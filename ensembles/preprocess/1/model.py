import json

import numpy as np

from python_backends import spec
from python_backends.preprocessing import run_preprocess
from python_backends.triton_io import OrchestratorModel
from python_backends.validation import ValidationLimits


class TritonPythonModel(OrchestratorModel):
    spec = spec.PREPROCESS
    settings_type = ValidationLimits

    async def handle(self, inputs):
        photo, audio, video = (
            inputs[name].reshape(-1)[0] if name in inputs else None
            for name in (spec.PHOTO_BYTES, spec.AUDIO_BYTES, spec.DRIVING_VIDEO_BYTES)
        )
        report = await run_preprocess(photo, audio, self.call_model, self.settings, driving_video=video)
        return {spec.PREPROCESS_REPORT: np.array([json.dumps(report).encode()], dtype=np.object_)}
