"""wav2vec2 hidden states exactly as Wan2.2-S2V's AudioEncoder computes them.

Wan2.2 (wan/modules/s2v/audio_encoder.py) loads Wav2Vec2Processor + Wav2Vec2ForCTC from the local folder
"wav2vec2-large-xlsr-53-english" (wan/configs/wan_s2v_14B.py), feeds 16 kHz audio through the processor
(zero-mean / unit-variance per clip), runs the model with output_hidden_states=True and, for S2V
(return_all_layers=True), concatenates every hidden state: [layers + 1, T, D] at 50 frames per second (the
first entry is the feature projection + positional convolution output). Its resampling to the video frame
rate happens later, in the video model, so it is not done here.

Only the processor's feature extractor is needed (the tokenizer files of the folder are not read). Weights
load from the official Hugging Face folder with local files only; transformers re-initialises missing
weights at random and only logs it, so the loading report is checked here and any missing or mis-shaped
weight is refused by name.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import WeightsUnavailable

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FPS = 50  # the feature encoder's total stride is 320 samples
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
REQUIRED_FILES = ("config.json", "preprocessor_config.json")
# SpecAugment's learned mask vector: used only while training, so a checkpoint saved without it is fine.
TRAINING_ONLY = frozenset({"wav2vec2.masked_spec_embed"})
# One forward at a time switches cuDNN's process-wide benchmark flag, so each restores what the process had.
_CUDNN_FLAG_LOCK = threading.Lock()


def check_folder(folder: Path) -> None:
    """Raise WeightsUnavailable naming what the folder lacks of the Hugging Face layout."""
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES[:2]))
    if missing:
        raise WeightsUnavailable(
            f"wav2vec2 folder {folder} is incomplete: it lacks {', '.join(missing)}; copy the whole Hugging "
            f"Face model folder there"
        )


def _describe(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


class Wav2Vec2Features:
    """Batched hidden-state extraction; `encode` takes 16 kHz mono waveforms of any lengths."""

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        check_folder(folder)
        try:
            import torch
            from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC
        except ImportError as exc:
            raise WeightsUnavailable(
                f"wav2vec2 weights are present but transformers cannot be imported: {exc}"
            ) from None
        self.folder, self.device = folder, device
        try:
            self.extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder, local_files_only=True)
            model, info = Wav2Vec2ForCTC.from_pretrained(
                folder, local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True,
                dtype=torch.float32,
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise WeightsUnavailable(f"cannot load the wav2vec2 model from {folder}: {exc}") from None
        mismatched = [f"{key} (checkpoint {tuple(ckpt)}, model {tuple(want)})"
                      for key, ckpt, want in info.get("mismatched_keys", ())]
        if mismatched:
            raise WeightsUnavailable(
                f"wav2vec2 checkpoint in {folder} has weights of the wrong shape for its config.json: "
                f"{_describe(mismatched)}; the checkpoint and config.json come from different models"
            )
        missing = [key for key in info.get("missing_keys", ()) if key not in TRAINING_ONLY]
        if missing:
            raise WeightsUnavailable(
                f"wav2vec2 checkpoint in {folder} is missing {len(missing)} weight(s): {_describe(missing)}; "
                f"it is not the complete official checkpoint"
            )
        if info.get("error_msgs"):
            raise WeightsUnavailable(f"wav2vec2 checkpoint in {folder}: {'; '.join(info['error_msgs'])}")
        if info.get("unexpected_keys"):
            unused = _describe(list(info["unexpected_keys"]))
            log.warning("wav2vec2: ignoring unused checkpoint weights %s", unused)
        if self.extractor.sampling_rate != SAMPLE_RATE:
            raise WeightsUnavailable(
                f"wav2vec2 in {folder} expects {self.extractor.sampling_rate} Hz audio; this server feeds "
                f"{SAMPLE_RATE} Hz"
            )
        self.model = model.eval().to(device)
        config = model.config
        self.layers = config.num_hidden_layers + 1
        self.dim = config.hidden_size
        # Models with a layer-normalised feature encoder were trained with attention masks, so a padded
        # batch gives each clip the same features as running it alone. Group-normalised ones (e.g.
        # wav2vec2-base) were not: their normaliser would see the padding, so they run one clip at a time.
        self.batched = bool(self.extractor.return_attention_mask)

    def describe(self) -> str:
        mode = "padded batch + attention mask" if self.batched else "one clip at a time (no attention mask)"
        return f"{self.folder.name}: {self.layers} hidden states x {self.dim}, {mode}"

    def encode(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
        """[layers + 1, T, D] float32 per waveform, T = the model's frame count for that clip."""
        groups = [list(range(len(waveforms)))] if self.batched else [[i] for i in range(len(waveforms))]
        results: list[np.ndarray | None] = [None] * len(waveforms)
        for group in groups:
            for index, features in zip(group, self._forward([waveforms[i] for i in group])):
                results[index] = features
        return results  # type: ignore[return-value]

    def _forward(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        inputs = self.extractor(
            [np.asarray(w, dtype=np.float32) for w in waveforms], sampling_rate=SAMPLE_RATE,
            padding=len(waveforms) > 1, return_attention_mask=self.batched, return_tensors="pt",
        )
        mask = inputs.get("attention_mask") if self.batched else None
        with torch.inference_mode(), cudnn_heuristics(self.device):
            output = self.model(
                inputs["input_values"].to(self.device),
                attention_mask=mask.to(self.device) if mask is not None else None,
                output_hidden_states=True,
            )
            hidden = torch.stack(output.hidden_states, dim=1)  # [B, layers + 1, T, D]
            lengths = self.model._get_feat_extract_output_lengths(
                torch.tensor([len(w) for w in waveforms])
            ).tolist()
        hidden = hidden.float().cpu().numpy()
        return [np.ascontiguousarray(hidden[i, :, : int(n)]) for i, n in enumerate(lengths)]


@contextlib.contextmanager
def cudnn_heuristics(device: str) -> Iterator[None]:
    """cuDNN picks wav2vec2's convolution algorithms by heuristics, even where the VAE's `wan_vae_cudnn_benchmark`
    has switched benchmark mode on for the process.

    Every recording length is a new shape for its convolutions, and benchmark mode times the algorithms of each new
    shape on each new thread: 0.31-0.37 s per request on an H100 against 0.05-0.06 s by heuristics, which are as
    fast once a length repeats (perf/results/wav2vec2_h100.json). The flag is process-wide, so a VAE convolution of
    a shape its thread has never met, run on another thread during this forward, is planned by heuristics too; the
    VAE's shapes are timed when the engine warms up, and its deterministic setting is left as it is."""
    import torch

    if torch.device(device).type != "cuda":
        yield
        return
    with _CUDNN_FLAG_LOCK:
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = before
