"""One .tflite network run with ai-edge-litert (the TFLite interpreter from PyPI; no TensorFlow, no mediapipe)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..errors import WeightsUnavailable


class TFLiteNetwork:
    """float32 NHWC in, the outputs in the file's order; batches by resizing the input's first axis."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise WeightsUnavailable("MediaPipe models need ai-edge-litert: pip install ai-edge-litert") from exc
        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
            self._interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:  # truncated file, or a custom op no runtime here provides
            raise WeightsUnavailable(f"cannot load {path}: {exc}") from exc
        self.path = path
        self._input = self._interpreter.get_input_details()[0]
        self._outputs = self._interpreter.get_output_details()
        self.size = (int(self._input["shape"][1]), int(self._input["shape"][2]))  # (height, width)
        self._batch = 1
        self._lock = threading.Lock()  # an interpreter holds its tensors: one call at a time

    def __call__(self, inputs: np.ndarray) -> list[np.ndarray]:
        """float32 [N, H, W, 3] -> each output with N on its first axis."""
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        count = len(inputs)
        with self._lock:
            if count != self._batch:
                shape = [count, *self._input["shape"][1:]]
                self._interpreter.resize_tensor_input(self._input["index"], shape)
                self._interpreter.allocate_tensors()
                self._batch = count
            self._interpreter.set_tensor(self._input["index"], inputs)
            self._interpreter.invoke()
            outputs = [self._interpreter.get_tensor(o["index"]) for o in self._outputs]
        # Detector heads fold the batch into their anchor axis ([1, N * anchors, C]): unfold it.
        return [out.reshape(count, -1, *out.shape[2:]) if out.shape[0] != count else out for out in outputs]
