"""`talkinghead export`: ONNX files of the vision networks from their official checkpoints, parity-checked.

Each exporter loads the official checkpoint from the weights root (strictly, through the same loader the
server uses), writes `<out>/<model>/<name>.onnx` with a dynamic batch axis, runs a random batch through
PyTorch and ONNX Runtime and reports the largest difference against a stated tolerance. By default `out`
is the weights root itself, where the `runtime: onnxruntime` settings look for the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import WeightsUnavailable
from .weights import official_path, weights_root

# fp32 export of the same graph: differences are accumulation-order noise, far under this.
PARITY_RTOL = 1e-3


@dataclass(frozen=True)
class Exported:
    network: torch.nn.Module
    onnx_name: str
    checkpoint: Path
    example: torch.Tensor  # a batch of 2, to compare both runtimes on
    write: Callable[[torch.nn.Module, Path, int], object]  # (network, path, opset): the model's own exporter


def _face_detector(root: Path) -> Exported:
    from .face_detection.onnx_export import export_onnx
    from .face_detection.retinaface import load_retinaface

    for backbone, name in (("resnet50", "Resnet50_Final.pth"), ("mobilenet0.25", "mobilenet0.25_Final.pth")):
        path = official_path("face_detector", name, root)
        if path is not None:
            # Preprocessed BGR-minus-mean pixels, so roughly +-128.
            example = torch.randn(2, 3, 160, 224, generator=torch.Generator().manual_seed(0)) * 60
            network = load_retinaface(path, backbone)
            return Exported(network, "retinaface.onnx", path, example, lambda n, p, o: export_onnx(n, p, o))
    raise WeightsUnavailable(
        f"no RetinaFace checkpoint: put Resnet50_Final.pth or mobilenet0.25_Final.pth in {root}/face_detector/"
    )


def _face_embedder(root: Path) -> Exported:
    from .face_embedding.iresnet import build_iresnet, export_onnx, load_backbone
    from .face_embedding.settings import FaceEmbedderSettings

    path = official_path("face_embedder", "backbone.pth", root)
    if path is None:
        raise WeightsUnavailable(f"no ArcFace checkpoint: put arcface_torch backbone.pth in {root}/face_embedder/")
    arch = FaceEmbedderSettings().arch
    network = load_backbone(build_iresnet(arch), path)
    example = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return Exported(network, "backbone.onnx", path, example, lambda n, p, o: export_onnx(n, p, opset=o))


def _face_landmarks(root: Path) -> Exported:
    from .face_landmarks.checkpoint import load_hrnet
    from .face_landmarks.onnx_export import export_onnx

    for name in ("HR18-WFLW.pth", "HR18-300W.pth"):
        path = official_path("face_landmarks", name, root)
        if path is not None:
            example = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
            network = load_hrnet(path)
            return Exported(network, "hrnet_w18.onnx", path, example, lambda n, p, o: export_onnx(n, p, o))
    raise WeightsUnavailable(f"no HRNet checkpoint: put HR18-WFLW.pth or HR18-300W.pth in {root}/face_landmarks/")


EXPORTERS: dict[str, Callable[[Path], Exported]] = {
    "face_detector": _face_detector,
    "face_landmarks": _face_landmarks,
    "face_embedder": _face_embedder,
}


def _outputs(result) -> list[np.ndarray]:
    items = result if isinstance(result, (list, tuple)) else [result]
    return [np.asarray(item.detach().numpy() if isinstance(item, torch.Tensor) else item) for item in items]


def export_model(model: str, out: Path | None = None, root: Path | None = None, opset: int = 17) -> dict:
    """Export one model's network to ONNX and compare ONNX Runtime with PyTorch on a batch of 2."""
    import onnxruntime

    root = root or weights_root()
    if root is None:
        raise WeightsUnavailable("no weights root: pass --weights DIR (official checkpoints as DIR/<model>/<file>)")
    exported = EXPORTERS[model](Path(root))
    path = Path(out or root) / model / exported.onnx_name
    path.parent.mkdir(parents=True, exist_ok=True)
    network = exported.network.float().eval()
    exported.write(network, path, opset)
    with torch.no_grad():
        reference = _outputs(network(exported.example))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    produced = session.run(None, {session.get_inputs()[0].name: exported.example.numpy()})
    worst = max(
        float(np.max(np.abs(ours - ref)) / (np.max(np.abs(ref)) + 1e-12)) for ours, ref in zip(produced, reference)
    )
    return {
        "model": model,
        "checkpoint": str(exported.checkpoint),
        "onnx": str(path),
        "opset": opset,
        "batch_axis": "dynamic",
        "max_relative_difference": worst,
        "tolerance": PARITY_RTOL,
        "parity": worst <= PARITY_RTOL,
    }
