"""Random checkpoints in the official file layouts, for timing the models whose real weights do not ship here.

Speed does not depend on weight values, so a weights root of these measures what the real files would cost:
RetinaFace ResNet-50 (`face_detector/Resnet50_Final.pth`), HRNet-W18 WFLW (`face_landmarks/HR18-WFLW.pth`),
ArcFace IResNet-50 (`face_embedder/backbone.pth`), SyncNet v2 (`lipsync_scorer/syncnet_v2.model`) and Wav2Lip
GAN (`mouth_refiner/wav2lip_gan.pth`), each loaded by the project's strict loaders. What they output is noise:
no verdict made with them means anything.
"""

from __future__ import annotations

from pathlib import Path

import torch

FILES = {
    "face_detector": "Resnet50_Final.pth",
    "face_landmarks": "HR18-WFLW.pth",
    "face_embedder": "backbone.pth",
    "lipsync_scorer": "syncnet_v2.model",
    "mouth_refiner": "wav2lip_gan.pth",
}


def _states() -> dict[str, dict]:
    from python_backends.face_detection.retinaface import RetinaFace
    from python_backends.face_embedding.iresnet import build_iresnet
    from python_backends.face_landmarks.hrnet import HighResolutionNet, HRNetConfig
    from python_backends.lipsync_scorer.syncnet import SyncNet
    from python_backends.mouth_refiner.wav2lip import Wav2Lip

    syncnet = {k: v for k, v in SyncNet().state_dict().items() if not k.endswith("num_batches_tracked")}
    return {
        "face_detector": RetinaFace("resnet50").state_dict(),
        "face_landmarks": HighResolutionNet(HRNetConfig.w18(98)).state_dict(),
        "face_embedder": build_iresnet("iresnet50").state_dict(),
        "lipsync_scorer": syncnet,  # syncnet_v2.model has no BatchNorm step counters (pre-1.0 torch)
        # as wav2lip_train.py's save_checkpoint writes it: DataParallel keys under "state_dict"
        "mouth_refiner": {"state_dict": {"module." + k: v for k, v in Wav2Lip().state_dict().items()}},
    }


def write_random_weights(root: Path, models: tuple[str, ...] = tuple(FILES), seed: int = 0) -> dict[str, Path]:
    """Write the files of `models` (FILES' keys) under root/<model>/; {model: path}."""
    torch.manual_seed(seed)
    paths = {}
    for model, state in _states().items():
        if model not in models:
            continue
        path = Path(root) / model / FILES[model]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
        paths[model] = path
    return paths


def models_of(argument: str) -> tuple[str, ...]:
    """A `--random-weights` argument (comma-separated) -> its models; ValueError naming those without a layout."""
    models = tuple(m for m in argument.split(",") if m)
    no_layout = sorted(set(models) - set(FILES))
    if no_layout:
        raise ValueError(f"--random-weights: no random checkpoint for {no_layout}; choose from {', '.join(FILES)}")
    return models


def describe(written: dict[str, Path]) -> dict[str, str]:
    """What a result file says of each model write_random_weights wrote."""
    return {model: f"random, in the official {path.name} layout: speed only" for model, path in written.items()}
