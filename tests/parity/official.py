"""The official Wan2.2 code (the `wan22` package, installed by `make install`) as a test oracle on the CPU.

`official()` imports the Wan team's `wan` package once and returns it. Only what cannot run on a CPU machine as
released is replaced, each with the same math:

* `flash_attention` (asserts CUDA and half precision) -> `sdpa_attention` below, in every module that bound it;
  also flash-attn's own `flash_attn_func`, which the Animate face blocks call (None when flash-attn is missing).
* Packages `import wan` needs that cannot be imported here get stand-ins, only while `wan` is imported (nothing
  else in a test session sees them), and only where the real one is missing:
  `torchvision` (its wheels need another torch than ours, see research/toolchain.md) -> the few transforms the
  `wan` modules call, re-implemented below on PIL / torch with torchvision's arithmetic; `decord` (reads videos;
  `in_memory_videos` hands WanAnimate frames instead),
  `dashscope` (a cloud prompt-extension client), and on the GPU image `librosa` and `ftfy` -> modules that raise
  if used.
* `torch.cuda.current_device()`, evaluated as a default argument when `wan/modules/t5.py` is imported -> 0 during
  the import only (every caller passes a device).

Nothing of upstream's code is copied here: the oracle runs as shipped.

`build_on_cpu(WanS2V, config, folder, ...)` constructs an official pipeline from a tiny release folder: while its
constructor runs, `torch.device("cuda:N")` in the pipeline's module means the CPU, and the VAE / umT5 constructors,
which hard-code the released widths, get the tiny release's widths. Nothing else changes.

With `float32=True` (WanAnimate casts its inputs to bf16 and builds CLIP in fp16 whatever the config says) the
bf16 / fp16 casts and the autocast of the pipeline's module mean float32, also while `float32_on_cpu(WanAnimate)`
is entered around `generate`: the oracle runs in float32 (a precision choice of the GPU run, not of the math).
`tiny_animate_widths` and `tiny_clip` build WanAnimateModel's motion encoder and CLIP projection and the CLIP
model at the tiny release's sizes, which they hard-code.

Helpers that need more of torchvision add it to `_transforms_module` (with torchvision's arithmetic and a comment).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

WAN22_VERSION = "2.2.11"  # the Makefile installs this version with --no-deps
# Modules of the `wan` package that bind `flash_attention` by name at import.
FLASH_ATTENTION_USERS = (
    "wan.modules", "wan.modules.attention", "wan.modules.model", "wan.modules.s2v.model_s2v",
    "wan.modules.s2v.motioner", "wan.modules.animate.model_animate", "wan.modules.animate.clip",
    "wan.distributed.ulysses",
)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_lens: torch.Tensor | None = None,
                   k_lens: torch.Tensor | None = None, dropout_p: float = 0.0, softmax_scale: float | None = None,
                   q_scale: float | None = None, causal: bool = False, window_size: Sequence[int] = (-1, -1),
                   deterministic: bool = False, dtype: torch.dtype = torch.bfloat16,
                   version: int | None = None) -> torch.Tensor:
    """wan.modules.attention.flash_attention's math through SDPA, in the inputs' dtype (the original casts to
    bf16/fp16 for flash-attn, which is a precision, not a math, choice): q [B, Lq, N, D], k/v [B, Lk, N, D];
    keys at or past k_lens[b] are masked out, as the varlen kernel never sees them."""
    if tuple(window_size) != (-1, -1):
        raise NotImplementedError("sliding-window attention is not used by the Wan models compared here")
    if dropout_p:
        raise NotImplementedError("attention dropout: the oracle runs in eval mode")
    lq, lk = q.shape[1], k.shape[1]
    if q_lens is not None and bool((q_lens != lq).any()):
        raise NotImplementedError("padded queries: the official flash path cannot unflatten them either")
    out_dtype = q.dtype
    q, k, v = (t.to(v.dtype).transpose(1, 2) for t in (q, k, v))
    if q_scale is not None:
        q = q * q_scale
    mask = None
    if k_lens is not None and bool((k_lens < lk).any()):  # all keys valid: no mask, so SDPA may pick any kernel
        mask = (torch.arange(lk, device=k.device)[None, :] < k_lens.to(k.device)[:, None])[:, None, None, :]
    if causal:
        tril = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
        mask = tril if mask is None else mask & tril
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=softmax_scale)
    return x.transpose(1, 2).to(out_dtype)


# ----------------------------------------------------------------------------- torchvision stand-ins


class InterpolationMode:
    NEAREST, BILINEAR, BICUBIC = "nearest", "bilinear", "bicubic"


_PIL_FILTERS = {InterpolationMode.NEAREST: Image.NEAREST, InterpolationMode.BILINEAR: Image.BILINEAR,
                InterpolationMode.BICUBIC: Image.BICUBIC}


class Compose:
    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, x):
        for transform in self.transforms:
            x = transform(x)
        return x


class Resize:
    """torchvision Resize on PIL images: PIL's resize; an int resizes the short side, the long one truncated."""

    def __init__(self, size, interpolation: str = InterpolationMode.BILINEAR, max_size=None, antialias=True) -> None:
        if max_size is not None:
            raise NotImplementedError("Resize(max_size=...) is not used by the wan modules")
        self.size, self.interpolation = size, interpolation

    def __call__(self, image):
        if not isinstance(image, Image.Image):
            raise NotImplementedError("the stand-in Resize takes PIL images (the S2V and Animate paths compared)")
        w, h = image.size
        if isinstance(self.size, int) or len(self.size) == 1:
            short = self.size if isinstance(self.size, int) else self.size[0]
            long = int(short * max(w, h) / min(w, h))
            out_w, out_h = (short, long) if w <= h else (long, short)
        else:
            out_h, out_w = self.size
        return image.resize((out_w, out_h), _PIL_FILTERS[self.interpolation])


class CenterCrop:
    """torchvision CenterCrop on PIL images: zero padding when the crop is larger, offsets int(round(d / 2))."""

    def __init__(self, size) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, image):
        if not isinstance(image, Image.Image):
            raise NotImplementedError("the stand-in CenterCrop takes PIL images")
        crop_h, crop_w = self.size
        w, h = image.size
        if crop_w > w or crop_h > h:
            padded = Image.new(image.mode, (max(w, crop_w), max(h, crop_h)))
            padded.paste(image, ((crop_w - w) // 2 if crop_w > w else 0, (crop_h - h) // 2 if crop_h > h else 0))
            image, (w, h) = padded, padded.size
        top, left = int(round((h - crop_h) / 2.0)), int(round((w - crop_w) / 2.0))
        return image.crop((left, top, left + crop_w, top + crop_h))


class ToTensor:
    """torchvision ToTensor on 8-bit PIL images: [C, H, W] float32 / 255."""

    def __call__(self, image) -> torch.Tensor:
        array = np.array(image, dtype=np.uint8, copy=True)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array).permute(2, 0, 1).contiguous().float().div(255)


class Normalize:
    """torchvision Normalize on tensors [..., C, H, W]: (x - mean) / std per channel, out of place."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> None:
        self.mean, self.std, self.inplace = mean, std, inplace

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        return (tensor if self.inplace else tensor.clone()).sub_(mean).div_(std)


def _unavailable(name: str):
    def call(*_args, **_kwargs):
        raise NotImplementedError(f"{name} is not available to the CPU oracle (see tests/parity/official.py)")
    return call


def _transforms_module() -> types.ModuleType:
    transforms = types.ModuleType("torchvision.transforms")
    for item in (Compose, Resize, CenterCrop, ToTensor, Normalize, InterpolationMode):
        setattr(transforms, item.__name__, item)
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.__getattr__ = lambda name: _unavailable(f"torchvision.transforms.functional.{name}")
    transforms.functional = functional
    return transforms


def _torchvision_modules() -> dict[str, types.ModuleType]:
    transforms = _transforms_module()
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms
    torchvision.utils = types.ModuleType("torchvision.utils")
    torchvision.utils.__getattr__ = lambda name: _unavailable(f"torchvision.utils.{name}")
    torchvision.__version__ = "0.0-stand-in"
    return {"torchvision": torchvision, "torchvision.transforms": transforms,
            "torchvision.transforms.functional": transforms.functional, "torchvision.utils": torchvision.utils}


def _raising_module(name: str) -> dict[str, types.ModuleType]:
    module = types.ModuleType(name)
    module.__getattr__ = lambda attr: _unavailable(f"{name}.{attr}")
    return {name: module}


STAND_INS = {"torchvision": _torchvision_modules, "decord": partial(_raising_module, "decord"),
             "dashscope": partial(_raising_module, "dashscope"), "librosa": partial(_raising_module, "librosa"),
             "ftfy": partial(_raising_module, "ftfy")}


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # noqa: BLE001 - installed but unusable here (torchvision beside another torch) is missing too
        for key in [key for key in sys.modules if key == name or key.startswith(name + ".")]:
            del sys.modules[key]
        return False


def _stand_in_modules() -> dict[str, types.ModuleType]:
    modules: dict[str, types.ModuleType] = {}
    for name, make in STAND_INS.items():
        if not _importable(name):
            modules.update(make())
    return modules


@contextmanager
def _stand_ins() -> Iterator[None]:
    # Import what checks for torchvision's presence first, so that they see the real (absent or present) package.
    import diffusers  # noqa: F401
    import transformers  # noqa: F401

    modules = _stand_in_modules()
    saved = {name: sys.modules.get(name) for name in modules}
    current_device = torch.cuda.current_device
    sys.modules.update(modules)
    torch.cuda.current_device = lambda: 0  # only evaluated as a default argument in wan/modules/t5.py
    try:
        yield
    finally:
        torch.cuda.current_device = current_device
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@cache
def official() -> types.ModuleType:
    """The official `wan` package, imported once with the CPU stand-ins above; raises with the fix if missing."""
    try:
        metadata = importlib.metadata.version("wan22")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("the official Wan2.2 code is not installed: run `make install` (it installs "
                           f"wan22=={WAN22_VERSION} with --no-deps and the `parity` extra)") from None
    if metadata != WAN22_VERSION:
        raise RuntimeError(f"wan22 {metadata} is installed, the parity tests compare against {WAN22_VERSION}: "
                           "run `make install`")
    with _stand_ins():
        wan = importlib.import_module("wan")
        for name in FLASH_ATTENTION_USERS:
            importlib.import_module(name)
    for name in FLASH_ATTENTION_USERS:
        sys.modules[name].flash_attention = sdpa_attention
    sys.modules["wan.modules.animate.face_blocks"].flash_attn_func = sdpa_attention  # (q, k, v) [B, L, N, D]
    return wan


@cache
def official_preprocess(name: str) -> types.ModuleType:
    """wan/modules/animate/preprocess/<name>.py, loaded from its file the way upstream's preprocessing scripts run:
    from that folder, importing their neighbours by bare name (`from pose2d_utils import ...`). The package's own
    __init__ imports SAM2 and a Flux pipeline, which the drawing and geometry helpers compared here do not use."""
    folder = Path(official().__file__).parent / "modules" / "animate" / "preprocess"
    before = set(sys.modules)
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(f"wan_animate_preprocess_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
        for key in set(sys.modules) - before:  # neighbours imported by bare name stay private to the module
            if Path(getattr(sys.modules[key], "__file__", None) or "/").parent == folder:
                del sys.modules[key]
    return module


# ----------------------------------------------------------------------------- official pipelines on the CPU


class _CpuDeviceTorch(types.ModuleType):
    """`torch` for a pipeline module whose constructor picks `cuda:{device_id}`: that choice becomes the CPU."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def device(spec: Any, index: int | None = None) -> torch.device:
        device = torch.device(spec) if index is None else torch.device(spec, index)
        return torch.device("cpu") if device.type == "cuda" else device


class _CpuFloat32Torch(_CpuDeviceTorch):
    """... in which bf16 and fp16 mean float32 and autocast is off: the oracle's float32 run on the CPU."""

    bfloat16 = float16 = torch.float32

    @staticmethod
    def autocast(*_args: Any, **_kwargs: Any) -> torch.autocast:
        return torch.autocast("cpu", enabled=False)


@contextmanager
def float32_on_cpu(pipeline_class: type) -> Iterator[None]:
    """While inside, the pipeline's module runs on the CPU in float32 (see _CpuFloat32Torch)."""
    with _replaced(sys.modules[pipeline_class.__module__], "torch", _CpuFloat32Torch()):
        yield


class _FramesReader:
    """decord.VideoReader over frames held in memory: `len` and `get_batch(indices).asnumpy()`, what wan/animate.py
    calls; no video codec between the frames the test gives both sides."""

    def __init__(self, frames: np.ndarray) -> None:
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def get_batch(self, indices: Sequence[int]) -> types.SimpleNamespace:
        batch = self.frames[list(indices)]
        return types.SimpleNamespace(asnumpy=lambda: batch.copy())


@contextmanager
def in_memory_videos(pipeline_class: type, videos: dict[str, np.ndarray]) -> Iterator[None]:
    """While inside, `VideoReader(path)` in the pipeline's module (decord's, not installable here) reads
    `videos[path]` ([N, H, W, 3] uint8 RGB, as decord decodes)."""
    with _replaced(sys.modules[pipeline_class.__module__], "VideoReader", lambda path: _FramesReader(videos[path])):
        yield


@contextmanager
def tiny_animate_widths(face_size: int, image_dim: int) -> Iterator[None]:
    """While inside, WanAnimateModel builds its motion encoder for `face_size` crops (512 hard-coded) and its CLIP
    projection for `image_dim`-wide tokens (1280 hard-coded); the motion encoder's channel table stays upstream's."""
    official()
    model_animate = sys.modules["wan.modules.animate.model_animate"]
    generator, projection = model_animate.Generator, model_animate.MLPProj
    with (_replaced(model_animate, "Generator", lambda size, style_dim, motion_dim: generator(
              face_size, style_dim=style_dim, motion_dim=motion_dim)),
          _replaced(model_animate, "MLPProj", lambda in_dim, out_dim: projection(image_dim, out_dim))):
        yield


@contextmanager
def tiny_clip(**sizes: Any) -> Iterator[None]:
    """While inside, CLIPModel builds `clip_xlm_roberta_vit_h_14(**sizes)` (vision_dim=..., text_dim=...) instead of
    the released ViT-H/14 + XLM-RoBERTa-large sizes it hard-codes."""
    official()
    clip = sys.modules["wan.modules.animate.clip"]
    with _replaced(clip, "clip_xlm_roberta_vit_h_14", partial(clip.clip_xlm_roberta_vit_h_14, **sizes)):
        yield


@contextmanager
def _replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


@contextmanager
def tiny_vae_and_t5(vae_dim: int, t5: Any) -> Iterator[None]:
    """While inside, `Wan2_1_VAE` and `T5EncoderModel` build the tiny release's sizes: vae_dim, the VAE's base width
    (`_video_vae` hard-codes the released 96); t5, the umT5's `UMT5Config` (`umt5_xxl` hard-codes the XXL sizes)."""
    official()
    vae2_1, t5_module = sys.modules["wan.modules.vae2_1"], sys.modules["wan.modules.t5"]
    tiny_t5 = partial(t5_module.umt5_xxl, vocab_size=t5.vocab_size, dim=t5.dim, dim_attn=t5.dim_attn,
                      dim_ffn=t5.dim_ffn, num_heads=t5.num_heads, encoder_layers=t5.num_layers,
                      num_buckets=t5.num_buckets, shared_pos=t5.shared_pos)
    with (_replaced(vae2_1, "_video_vae", partial(vae2_1._video_vae, dim=vae_dim)),
          _replaced(t5_module, "umt5_xxl", tiny_t5)):
        yield


def build_on_cpu(pipeline_class: type, config: Any, folder: Path | str, *, vae_dim: int, t5: Any,
                 float32: bool = False, **kwargs: Any) -> Any:
    """`pipeline_class(config, folder, **kwargs)` (WanS2V, WanAnimate) built on the CPU from a tiny release.

    vae_dim, t5: the tiny release's VAE width and umT5 config (`tiny_vae_and_t5`). Give `config` float32
    param_dtype / t5_dtype for CPU parity; float32: the pipeline's hard-coded bf16 / fp16 mean float32 too
    (WanAnimate).
    """
    official()
    cpu_torch = _CpuFloat32Torch() if float32 else _CpuDeviceTorch()
    with _replaced(sys.modules[pipeline_class.__module__], "torch", cpu_torch), tiny_vae_and_t5(vae_dim, t5):
        return pipeline_class(config, str(folder), **kwargs)
