"""Export the HRNet face-alignment network to ONNX: crops [N, 3, 256, 256] -> heatmaps [N, P, 64, 64].

    python -m python_backends.face_landmarks.onnx_export \
        --checkpoint <weights>/face_landmarks/HR18-WFLW.pth --out <weights>/face_landmarks/HR18-WFLW.onnx

The batch axis is dynamic; the crop size is fixed by the network's training (256x256). Pre-processing
(crop, normalisation) and decoding stay in transforms.py, identical for both runtimes.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import torch

from .checkpoint import load_hrnet
from .hrnet import HighResolutionNet
from .transforms import INPUT_SIZE

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "heatmaps"


def export_onnx(net: HighResolutionNet, path: Path, opset_version: int = 17, batch: int = 2) -> Path:
    """Write `net` (put in eval mode, on CPU) to `path` with a dynamic batch axis."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.cpu().eval()
    sample = torch.zeros(batch, 3, INPUT_SIZE, INPUT_SIZE)
    with warnings.catch_warnings():
        # The TorchScript-based exporter needs no onnxscript; its deprecation notice is noise here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (sample,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset_version,
            do_constant_folding=True,
        )
    logger.info("exported HRNet (%d landmarks) to %s", net.config.num_joints, path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="official HR18-WFLW.pth or HR18-300W.pth"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    export_onnx(load_hrnet(args.checkpoint), args.out, opset_version=args.opset)


if __name__ == "__main__":
    main()
