"""Export the RetinaFace network to ONNX (dynamic batch, height and width) for the onnxruntime runtime.

    python -m python_backends.face_detection.onnx_export --backbone resnet50 \
        --checkpoint <weights>/face_detector/Resnet50_Final.pth --out <weights>/face_detector/retinaface.onnx
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import onnx
import torch

from .retinaface import BACKBONES, RetinaFace, load_retinaface

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAMES = ("loc", "conf", "landms")
BACKBONE_KEY = "retinaface_backbone"  # metadata entry naming the backbone, read back at load time


def export_onnx(net: RetinaFace, path: Path, opset_version: int = 17, sample_size: int = 256) -> Path:
    """Write `net` (in eval mode) to `path`; the input is the preprocessed BGR-minus-mean NCHW tensor."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.cpu().eval()
    sample = torch.zeros(1, 3, sample_size, sample_size)
    dynamic = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    dynamic.update({name: {0: "batch", 1: "priors"} for name in OUTPUT_NAMES})
    with warnings.catch_warnings():
        # The TorchScript-based exporter is the one that needs no onnxscript; its deprecation notice is noise.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (sample,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic,
            opset_version=opset_version,
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = BACKBONE_KEY, net.backbone
    onnx.save(model, str(path))
    logger.info("exported RetinaFace %s to %s", net.backbone, path)
    return path


def onnx_backbone(path: Path) -> str | None:
    """The backbone recorded by export_onnx, or None for a file exported some other way."""
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == BACKBONE_KEY:
            return entry.value
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", choices=sorted(BACKBONES), required=True)
    parser.add_argument("--checkpoint", type=Path, required=True, help="official Resnet50_Final.pth etc.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    export_onnx(load_retinaface(args.checkpoint, args.backbone), args.out, opset_version=args.opset)


if __name__ == "__main__":
    main()
