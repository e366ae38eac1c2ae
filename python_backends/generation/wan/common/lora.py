"""LoRA files for the Wan DiTs, merged into the weights at load: one reader and one merge for every release.

Layouts read (each key may carry a `base_model.model.` (PEFT) or `diffusion_model.` (ComfyUI, LightX2V) prefix):

* PEFT: `<module>.lora_A[.default].weight` [r, in] and `<module>.lora_B[.default].weight` [out, r]; the scale
  alpha / r comes from the training config, not the file. Wan-Animate's `relighting_lora.ckpt` ({"state_dict":
  ...}, rank 128, alpha 128, read by peft's set_peft_model_state_dict) and LiveAvatar's `liveavatar.safetensors`
  (rank 128, alpha 64, loaded by `WanS2V.add_lora_to_model` into a get_peft_model wrapper: torch load_state_dict
  of keys carrying the adapter segment `.default`, then merge_and_unload) are in it.
* LightX2V / Lightning (tools/extract/lora_extractor.py and lightx2v/utils/lora_loader.py of ModelTC/LightX2V):
  `diffusion_model.<module>.lora_down.weight` [r, in] and `.lora_up.weight` [out, r], optionally
  `diffusion_model.<module>.alpha` (a scalar; the Wan2.2-Lightning files have it, LightX2V's own extractions fold
  it in and leave it out), plus whole-tensor differences for small or 1-D tensors: `<p>.diff` (p.weight),
  `<p>.diff_b` (p.bias) and `<p>.diff_m` (p.modulation, e.g. `blocks.0.diff_m` -> `blocks.0.modulation`).

Merge (LightX2V's LoraLoader.apply_lora and peft's merge_and_unload compute the same):
    W += strength * (alpha / r) * B A      alpha: the file's `.alpha`, else the caller's alpha, else r (scale 1)
    p += strength * diff
computed in float32 and stored back in the weights' dtype. Merging once at load gives the outputs of the unmerged
LoRA forward (tests/unit/test_wan_lora.py) at no run-time cost. With FP8 the merge comes first and the merged
weights are quantized (fp8.convert_to_fp8 runs after it), as LiveAvatar does (merge_and_unload, then
replace_linear_with_scaled_fp8): a run-time LoRA branch beside FP8 weights is never needed.

Strictness (the released loaders skip what they cannot match, silently or with a warning; a wrong file here is an
error naming the file and the key): a key of no known layout, an A without its B (or an alpha without its pair),
a pair or difference for a module or parameter the model does not have, a shape that does not fit, and, when the
release fixes its target modules (`targets`), a target without weights or weights outside the targets.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

from .checkpoint import CheckpointError, _first

log = logging.getLogger(__name__)

RELIGHTING_LORA_ALPHA = 128  # wan/animate.py get_loraconfig: rank 128, alpha 128
_PREFIX = r"^(?:base_model\.model\.|diffusion_model\.)?"
_PAIR_KEY = re.compile(_PREFIX + r"(?P<module>.+)\.lora_(?P<part>A|B|down|up)(?:\.default)?\.weight$")
_ALPHA_KEY = re.compile(_PREFIX + r"(?P<module>.+)\.alpha$")
_DIFF_KEY = re.compile(_PREFIX + r"(?P<base>.+)\.(?P<kind>diff|diff_b|diff_m)$")
_DIFF_TARGET = {"diff": "weight", "diff_b": "bias", "diff_m": "modulation"}
_DOWN, _UP = ("A", "down"), ("B", "up")


@dataclass
class LoraPair:
    down: torch.Tensor | None = None  # A [r, in]
    up: torch.Tensor | None = None  # B [out, r]
    alpha: float | None = None  # from the file (Lightning); None: the caller's
    keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LoraWeights:
    """A parsed LoRA file: low-rank pairs by module name and whole-tensor differences by parameter name."""

    source: str
    pairs: Mapping[str, LoraPair]
    diffs: Mapping[str, tuple[torch.Tensor, str]]  # parameter name -> (difference, the file's key)


def read_lora_file(path: Path | str) -> dict[str, torch.Tensor]:
    """A .safetensors file, or a PyTorch checkpoint holding the tensors flat or under "state_dict" (as
    relighting_lora.ckpt, which the official code reads with torch.load(path)["state_dict"])."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"LoRA file {path} is missing")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {exc}") from None
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no LoRA tensors (expected a flat dict or {{'state_dict': {{...}}}})")
    return dict(state)


def parse_lora(state: Mapping[str, torch.Tensor], source: str) -> LoraWeights:
    """Group the keys of a LoRA file by module; any key of no known layout or any incomplete pair is an error."""
    pairs: dict[str, LoraPair] = {}
    diffs: dict[str, tuple[torch.Tensor, str]] = {}
    strange = []
    for key, tensor in state.items():
        if match := _PAIR_KEY.match(key):
            pair = pairs.setdefault(match["module"], LoraPair())
            slot = "down" if match["part"] in _DOWN else "up"
            if getattr(pair, slot) is not None:
                raise CheckpointError(f"{source}: {key} repeats the lora_{match['part']} of {match['module']}")
            setattr(pair, slot, tensor)
            pair.keys.append(key)
        elif match := _ALPHA_KEY.match(key):
            if tensor.numel() != 1:
                raise CheckpointError(f"{source}: {key} must be one number, got shape {list(tensor.shape)}")
            pair = pairs.setdefault(match["module"], LoraPair())
            pair.alpha = float(tensor.reshape(()).item())
            pair.keys.append(key)
        elif match := _DIFF_KEY.match(key):
            diffs[f"{match['base']}.{_DIFF_TARGET[match['kind']]}"] = (tensor, key)
        else:
            strange.append(key)
    if strange:
        raise CheckpointError(f"{source}: {len(strange)} key(s) are not LoRA weights (expected <module>.lora_A / "
                              f"lora_B / lora_down / lora_up .weight, .alpha, .diff, .diff_b, .diff_m): "
                              f"{_first(strange)}")
    for module, pair in sorted(pairs.items()):
        if pair.down is None or pair.up is None:
            have = ", ".join(sorted(pair.keys))
            lacks = "lora_A / lora_down" if pair.down is None else "lora_B / lora_up"
            raise CheckpointError(f"{source}: {module} has {have} but no {lacks} weight")
    if not pairs and not diffs:
        raise CheckpointError(f"{source} holds no LoRA weights")
    return LoraWeights(source, pairs, diffs)


def peft_targets(model: nn.Module, target_modules: Iterable[str]) -> set[str]:
    """The nn.Linear modules peft's LoraConfig(target_modules=[...]) wraps: a name equal to a target or ending in
    "." + target (peft's check_target_module_exists), e.g. "q" takes every self-, cross- and audio-attention q."""
    targets = tuple(target_modules)
    return {name for name, module in model.named_modules() if isinstance(module, nn.Linear)
            and any(name == t or name.endswith("." + t) for t in targets)}


def relighting_targets(model: nn.Module) -> set[str]:
    """Wan-Animate's relighting LoRA targets (animate_utils.get_loraconfig): every nn.Linear under "blocks" that
    is neither a face nor a modulation layer."""
    return {name for name, module in model.named_modules()
            if "blocks" in name and "face" not in name and "modulation" not in name and isinstance(module, nn.Linear)}


def _check_targets(lora: LoraWeights, targets: set[str]) -> None:
    outside = set(lora.pairs) - targets
    if outside:
        raise CheckpointError(f"{lora.source}: LoRA weights for module(s) this release does not target: "
                              f"{_first(outside)}")
    missing = targets - set(lora.pairs)
    if missing:
        raise CheckpointError(f"{lora.source}: {len(missing)} target module(s) have no LoRA weights: "
                              f"{_first(missing)}")
    if lora.diffs:
        raise CheckpointError(f"{lora.source}: whole-tensor differences are not part of this release's LoRA: "
                              f"{_first(key for _, key in lora.diffs.values())}")


@torch.no_grad()
def merge_lora_(model: nn.Module, lora: LoraWeights | Mapping[str, torch.Tensor] | Path | str, *,
                alpha: float | None = None, strength: float = 1.0, targets: set[str] | None = None) -> nn.Module:
    """W += strength (alpha / r) B A for every pair and p += strength diff for every difference, in place.

    `alpha` applies to pairs whose file has no `.alpha` (None: alpha = r). `targets`, when the release fixes its
    modules (a PEFT config), must be exactly the modules with pairs. Everything is checked before any weight
    changes, so a refused file leaves the model as it was.
    """
    if isinstance(lora, (str, Path)):
        lora = parse_lora(read_lora_file(lora), str(lora))
    elif not isinstance(lora, LoraWeights):
        lora = parse_lora(lora, "LoRA")
    source = lora.source
    if targets is not None:
        _check_targets(lora, targets)
    modules = dict(model.named_modules())
    parameters = dict(model.named_parameters())
    # Checked first, merged after: the deltas are computed one at a time (a 14B model's would not fit at once).
    merges: list[tuple[nn.Parameter, LoraPair | torch.Tensor, float]] = []
    for name, pair in sorted(lora.pairs.items()):
        layer = modules.get(name)
        if not isinstance(layer, nn.Linear):
            what = "is not a linear layer" if layer is not None else "does not exist"
            raise CheckpointError(f"{source}: {pair.keys[0]} targets {name}, which {what} in this model")
        down, up = pair.down, pair.up
        out_dim, in_dim = layer.weight.shape
        if (down.dim() != 2 or up.dim() != 2 or down.shape[1] != in_dim or up.shape[0] != out_dim
                or down.shape[0] != up.shape[1]):
            raise CheckpointError(f"{source}: {name} down (A) {list(down.shape)} / up (B) {list(up.shape)} do not "
                                  f"fit its [{out_dim}, {in_dim}] weight (A [r, {in_dim}], B [{out_dim}, r])")
        rank = down.shape[0]
        scale = strength * (pair.alpha if pair.alpha is not None else alpha if alpha is not None else rank) / rank
        merges.append((layer.weight, pair, scale))
    for name, (diff, key) in sorted(lora.diffs.items()):
        param = parameters.get(name)
        if param is None:
            raise CheckpointError(f"{source}: {key} targets {name}, which does not exist in this model")
        if tuple(diff.shape) != tuple(param.shape):
            raise CheckpointError(f"{source}: {key} has shape {list(diff.shape)}, {name} is {list(param.shape)}")
        merges.append((param, diff, strength))
    for param, update, scale in merges:
        device = param.device
        delta = (update.up.to(device).float() @ update.down.to(device).float() if isinstance(update, LoraPair)
                 else update.to(device).float())
        param.copy_((param.float() + delta * scale).to(param.dtype))
    log.info("merged %s: %d low-rank pairs, %d differences (strength %g)", source, len(lora.pairs),
             len(lora.diffs), strength)
    return model
