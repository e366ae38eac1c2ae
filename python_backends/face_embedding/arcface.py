"""ArcFace runners: the arcface_torch IResNet in torch, and insightface ONNX recognition models.

Both take aligned RGB uint8 crops [N, S, S, 3] and return raw (unnormalised) embeddings [N, D] from one
forward for the whole batch.

Colour order: arcface_torch's inference.py converts cv2's BGR to RGB before the network, and insightface's
ArcFaceONNX feeds cv2 (BGR) images through `cv2.dnn.blobFromImages(..., swapRB=True)`, i.e. also RGB. Our
images are RGB already, so neither runner swaps channels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import WeightsUnavailable
from ..shape_buckets import padded_forward, warm_buckets
from .alignment import align_batch
from .iresnet import IResNet, build_iresnet, load_backbone

log = logging.getLogger(__name__)


def resolve_torch_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("%s requested but this torch has no CUDA; running on CPU", device)
        return torch.device("cpu")
    return torch.device(device)


class ArcFaceTorchRunner:
    """arcface_torch inference: RGB, x / 255, (x - 0.5) / 0.5, IResNet."""

    def __init__(self, model: IResNet, device: str = "cpu") -> None:
        self.device = resolve_torch_device(device)
        self.model = model.eval().to(self.device)
        self.input_size = 112
        if self.device.type == "cuda":  # QA embeds a different number of detected faces every segment
            warm_buckets(self.model, lambda n: (torch.zeros(n, 3, self.input_size, self.input_size,
                                                            device=self.device),))

    @classmethod
    def from_checkpoint(cls, path: Path, arch: str, device: str = "cpu") -> ArcFaceTorchRunner:
        return cls(load_backbone(build_iresnet(arch), path), device)

    @torch.inference_mode()
    def embed(self, crops: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)
        batch = batch.permute(0, 3, 1, 2).float().div_(255).sub_(0.5).div_(0.5)
        return padded_forward(self.model, batch).float().cpu().numpy()


def onnx_input_normalisation(model_path: Path) -> tuple[float, float]:
    """(mean, std) the way insightface's ArcFaceONNX decides it.

    Models converted from mxnet carry their own Sub/Mul normalisation in the first nodes and take raw
    0..255 pixels; the others (w600k_r50 among them) expect (x - 127.5) / 127.5.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    names = [node.name for node in graph.node[:8]]
    has_sub = any(name.startswith(("Sub", "_minus")) for name in names)
    has_mul = any(name.startswith(("Mul", "_mul")) for name in names)
    return (0.0, 1.0) if (has_sub and has_mul) else (127.5, 127.5)


def onnx_providers(device: str) -> list[str]:
    import onnxruntime

    if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class ArcFaceOnnxRunner:
    """An insightface recognition ONNX model (e.g. buffalo_l/w600k_r50.onnx) on onnxruntime."""

    def __init__(self, path: Path, device: str = "cpu", threads: int = 0) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=onnx_providers(device)
            )
        except Exception as exc:
            raise WeightsUnavailable(f"onnxruntime cannot load {path}: {exc}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4:
            raise WeightsUnavailable(
                f"{path} is not an ArcFace recognition model: expected one [N, 3, H, W] input and one "
                f"output, found inputs {[(i.name, i.shape) for i in inputs]}, outputs {[o.name for o in outputs]}"
            )
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        height, width = inputs[0].shape[2:4]
        if height != width or not isinstance(height, int):
            raise WeightsUnavailable(f"{path} takes {height}x{width} crops; ArcFace models are square")
        self.input_size = int(height)
        # A fixed batch dimension (some exports) means one crop per run.
        batch_dim = inputs[0].shape[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self.input_mean, self.input_std = onnx_input_normalisation(path)
        log.info(
            "ArcFace ONNX %s: input %s %dx%d, mean %.1f std %.1f, providers %s",
            path,
            self.input_name,
            self.input_size,
            self.input_size,
            self.input_mean,
            self.input_std,
            self.session.get_providers(),
        )

    def embed(self, crops: np.ndarray) -> np.ndarray:
        blob = (crops.astype(np.float32).transpose(0, 3, 1, 2) - self.input_mean) / self.input_std
        blob = np.ascontiguousarray(blob, dtype=np.float32)
        if self.fixed_batch is None:
            return self.session.run([self.output_name], {self.input_name: blob})[0]
        step = self.fixed_batch
        parts = []
        for start in range(0, len(blob), step):
            chunk = blob[start : start + step]
            count = len(chunk)
            if count < step:  # pad the last chunk up to the model's fixed batch
                chunk = np.concatenate([chunk, np.zeros((step - count,) + chunk.shape[1:], np.float32)])
            parts.append(self.session.run([self.output_name], {self.input_name: chunk})[0][:count])
        return np.concatenate(parts)


class ArcFaceTritonRunner:
    """An ArcFace export served as its own Triton model: 112 x 112 crops scaled to [-1, 1], the input of
    both arcface_torch (x / 255 - 0.5) / 0.5 and w600k_r50 (x - 127.5) / 127.5."""

    input_size = 112

    def __init__(self, network) -> None:
        self.network = network  # triton_network.TritonNetwork: float32 [N, 3, 112, 112] -> ([N, D],)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        blob = (crops.astype(np.float32).transpose(0, 3, 1, 2) - 127.5) / 127.5
        (embeddings,) = self.network(np.ascontiguousarray(blob))
        return embeddings


class ArcFaceEmbedder:
    """Aligns each face from its 5 keypoints, then embeds all crops in one forward."""

    def __init__(self, runner: ArcFaceTorchRunner | ArcFaceOnnxRunner | ArcFaceTritonRunner) -> None:
        self.runner = runner

    def embed_faces(self, images: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        del boxes  # ArcFace alignment needs only the keypoints
        crops = align_batch(images, keypoints, self.runner.input_size)
        return self.runner.embed(crops)
