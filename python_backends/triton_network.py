"""Networks served as Triton models of their own, called through BLS from the python-backend models.

Production path (the NGC Triton container, docs/deployment.md): the heavy forward passes run in Triton's
ONNX Runtime or TensorRT backend (deploy/triton/networks/<model>_net, batched on the GPU), while the
python models keep the inputs and outputs of python_backends/spec.py and do what the exported graphs do
not: decoding, resizing, cropping, alignment, NMS, heatmap decoding, head pose. A python model selects
this path with `runtime: triton` (face_detector, face_landmarks) or `embedder: arcface-triton`
(face_embedder), naming the network's Triton model in `network_model`.

The tensor names here are the ones our exporters write (`talkinghead export`); a unit test checks both
them and the network configs under deploy/triton/networks/ against this table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import TalkingHeadError, WeightsUnavailable


@dataclass(frozen=True)
class NetworkSpec:
    front: str  # the python model that calls the network
    model: str  # the network's Triton model name (the front's `network_model` default)
    input: str  # FP32 [B, 3, H, W], pre-processed by the front
    outputs: tuple[str, ...]
    onnx_name: str  # the file `talkinghead export <front>` writes under <out>/<front>/


NETWORKS: dict[str, NetworkSpec] = {
    spec.front: spec
    for spec in (
        # RetinaFace: BGR minus the BGR mean, any H x W -> per-prior box offsets, scores, 5-point offsets.
        NetworkSpec("face_detector", "face_detector_net", "input", ("loc", "conf", "landms"), "retinaface.onnx"),
        # HRNetV2-W18: normalised 256 x 256 face crops -> 64 x 64 heatmaps (98 WFLW or 68 300-W points).
        NetworkSpec("face_landmarks", "face_landmarks_net", "image", ("heatmaps",), "hrnet_w18.onnx"),
        # ArcFace IResNet: aligned 112 x 112 crops scaled to [-1, 1] -> raw 512-d embeddings.
        NetworkSpec("face_embedder", "face_embedder_net", "input.1", ("embedding",), "backbone.onnx"),
    )
}


class TritonNetwork:
    """`network(x) -> outputs`: one BLS request per call, the whole batch in it.

    Needs to run inside a Triton python-backend model (BLS); the import of the backend utilities is
    deferred so that the predictor modules stay importable anywhere.
    """

    def __init__(self, model_name: str, network: NetworkSpec) -> None:
        if not model_name:
            raise ValueError(f"{network.front}: network_model must name the Triton model of the network")
        self.model_name = model_name
        self.network = network

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        import triton_python_backend_utils as pb_utils

        request = pb_utils.InferenceRequest(
            model_name=self.model_name,
            requested_output_names=list(self.network.outputs),
            inputs=[pb_utils.Tensor(self.network.input, np.ascontiguousarray(x, dtype=np.float32))],
        )
        response = request.exec()
        if response.has_error():
            error = response.error()
            message = (
                f"{self.network.front}: the network model {self.model_name!r} did not answer ({error.message()}); "
                "deploy it next to this model (docs/deployment.md) or set the runtime back to torch"
            )
            if error.code() in (pb_utils.TritonError.UNAVAILABLE, pb_utils.TritonError.NOT_FOUND):
                raise WeightsUnavailable(message)
            raise TalkingHeadError(message)
        outputs = []
        for name in self.network.outputs:
            tensor = pb_utils.get_output_tensor_by_name(response, name)
            if tensor is None:
                raise TalkingHeadError(f"{self.network.front}: {self.model_name!r} returned no output {name!r}")
            outputs.append(_numpy(tensor))
        return tuple(outputs)


def _numpy(tensor) -> np.ndarray:
    # A GPU network (TensorRT, ONNX Runtime CUDA) may hand its outputs back in device memory.
    if tensor.is_cpu():
        return np.asarray(tensor.as_numpy(), dtype=np.float32)
    import torch.utils.dlpack

    return torch.utils.dlpack.from_dlpack(tensor.to_dlpack()).float().cpu().numpy()
