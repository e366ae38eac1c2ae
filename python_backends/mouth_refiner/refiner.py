"""What Rudrabha/Wav2Lip's inference.py does per frame, as a library: crop the padded face box, mask its lower
half, pair it with the frame's 0.2 s mel window, run the generator, and put the new lower face back.

Kept from the official code: the box handling (detector box truncated to pixels, `pads` top/bottom/left/right
clamped to the image, then get_smoothened_boxes' forward moving average), the 96x96 crop (cv2 bilinear), the
mask (`img_masked[:, img_size//2:] = 0`), the six channels (masked, then the same crop as the reference), BGR
order scaled to [0, 1], the mel windows (16 frames starting at `int(i * 80. / fps)`, the last one clamped to the
end of the mel). Changed: the paste-back is a feathered blend over the lower face instead of a hard paste
(`blend_mask` says why), frames from the middle of a clip index the clip's mel by their place in the clip, and one
call takes several runs one after another (`frame_index`), each smoothed on its own, through one network pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from ..errors import InputError
from ..shape_buckets import padded_forward, warm_buckets
from .wav2lip import IMG_SIZE, MEL_BINS, MEL_STEP, Wav2Lip

MEL_FPS = 80.0  # Wav2Lip mel frames per second (16 kHz, hop 200)
MIN_FACE_PX = 16  # a padded face box smaller than this has no mouth worth regenerating
MAX_FPS = 120.0


def mel_start(frame: int, fps: float) -> int:
    """First mel frame of video frame `frame`: the official `int(i * mel_idx_multiplier)`, multiplier 80/fps."""
    return int(frame * (MEL_FPS / fps))


def mel_windows(mel: np.ndarray, frame_index: np.ndarray, fps: float) -> np.ndarray:
    """[n, 80, 16]: the mel window of each frame, given its index in the clip.

    A window running past the end of the mel is the mel's last 16 frames, as the official last chunk.
    """
    total = mel.shape[1]
    windows = np.empty((len(frame_index), mel.shape[0], MEL_STEP), dtype=np.float32)
    for k, frame in enumerate(frame_index):
        start = mel_start(int(frame), fps)
        start = total - MEL_STEP if start + MEL_STEP > total else start
        windows[k] = mel[:, start : start + MEL_STEP]
    return windows


def runs_of(frame_index: np.ndarray) -> list[slice]:
    """The stretches of consecutive clip frames in `frame_index` (increasing), as slices of it."""
    edges = [0, *(np.flatnonzero(np.diff(frame_index) != 1) + 1).tolist(), len(frame_index)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def padded_boxes(boxes: np.ndarray, pads: Sequence[int], height: int, width: int) -> np.ndarray:
    """[n, 4] int x1, y1, x2, y2: the official face_detect's box (clipped at 0, truncated to pixels) plus the
    pads (top, bottom, left, right), clamped to the image."""
    top, bottom, left, right = pads
    rect = np.clip(np.asarray(boxes, dtype=np.float64), 0, None).astype(np.int64)
    out = np.empty_like(rect)
    out[:, 0] = np.maximum(0, rect[:, 0] - left)
    out[:, 1] = np.maximum(0, rect[:, 1] - top)
    out[:, 2] = np.minimum(width, rect[:, 2] + right)
    out[:, 3] = np.minimum(height, rect[:, 3] + bottom)
    return out


def smooth_boxes(boxes: np.ndarray, window: int) -> np.ndarray:
    """get_smoothened_boxes: each box becomes the mean of itself and the next window-1 boxes, in place and
    truncated to int as the official integer array does; the tail averages the last `window` boxes (some of
    them already smoothed, as in the official loop). A run shorter than the window is averaged whole (the
    official slice would start at a negative index there)."""
    boxes = np.array(boxes, dtype=np.int64)
    window = min(window, len(boxes))
    for i in range(len(boxes)):
        chunk = boxes[len(boxes) - window :] if i + window > len(boxes) else boxes[i : i + window]
        boxes[i] = np.mean(chunk, axis=0)
    return boxes


def network_inputs(crops_bgr: np.ndarray) -> np.ndarray:
    """[n, 6, 96, 96] float32 from [n, 96, 96, 3] uint8 BGR crops: the lower half masked to zero, then the
    unmasked crop as the reference (the official uses the frame itself as the reference), scaled to [0, 1]."""
    masked = crops_bgr.copy()
    masked[:, IMG_SIZE // 2 :] = 0
    six = np.concatenate((masked, crops_bgr), axis=3).astype(np.float32) / 255.0
    return np.ascontiguousarray(six.transpose(0, 3, 1, 2))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def blend_mask(height: int, width: int, feather: float) -> np.ndarray:
    """[height, width] weights of the predicted face inside a padded box.

    The official inference pastes the whole 96x96 prediction back hard. Its colour and sharpness differ
    slightly from the generated frame, so a hard paste leaves a rectangular seam around the box; our
    edge-bleeding gate measures gradient energy along the face boundary and flags such seams. Here the upper
    half (the part Wav2Lip was shown unmasked) stays exactly the original, the weight rises smoothly from the
    box's mid-line over `feather` of its height, and falls smoothly to zero at the left, right and bottom
    edges over `feather` of the box size, so the box outline is never visible.
    """
    rows = (np.arange(height) + 0.5) / height
    cols = (np.arange(width) + 0.5) / width
    vertical = _smoothstep((rows - 0.5) / feather) * _smoothstep((1.0 - rows) / feather)
    horizontal = _smoothstep(cols / feather) * _smoothstep((1.0 - cols) / feather)
    mask = (vertical[:, None] * horizontal[None, :]).astype(np.float32)
    mask[rows <= 0.5] = 0.0
    return mask


def contour_mask(height: int, width: int, contour: np.ndarray, margin: float) -> np.ndarray:
    """[height, width] weights around a closed lip contour given in box pixels: 1 inside the contour grown by
    `margin` of the mouth's width (the skin that moves with the lips), falling smoothly to 0 over that margin."""
    points = np.asarray(contour, np.float64)
    grow = max(1.0, margin * float(np.ptp(points[:, 0])))
    inside = np.zeros((height, width), np.uint8)
    cv2.fillPoly(inside, [np.round(points).astype(np.int32)], 1)
    outside_distance = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 3)
    return _smoothstep(2.0 - outside_distance / grow).astype(np.float32)  # 1 up to `grow` away, 0 at twice that


def blend_into(frame: np.ndarray, box: Sequence[int], face_rgb: np.ndarray, feather: float,
               contour: np.ndarray | None = None, margin: float = 0.35) -> None:
    """Blend `face_rgb` (float 0..255, box-sized) into `frame` inside `box`, in place; pixels where the mask is
    zero (outside the box, the upper half of the face, and with a lip `contour` in frame pixels, everything away
    from the mouth) keep their exact values."""
    x1, y1, x2, y2 = (int(v) for v in box)
    region = frame[y1:y2, x1:x2]
    weights = blend_mask(y2 - y1, x2 - x1, feather)
    if contour is not None:
        weights = weights * contour_mask(y2 - y1, x2 - x1, np.asarray(contour) - (x1, y1), margin)
    mask = weights[..., None]
    mixed = region.astype(np.float32) + mask * (face_rgb - region.astype(np.float32))
    frame[y1:y2, x1:x2] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def frame_indices(start_frame: int, count: int, frame_index: np.ndarray | None) -> np.ndarray:
    """[count] int64: each frame's index in the clip (`frame_index`, or consecutive from `start_frame`), or
    InputError."""
    if frame_index is None:
        return np.arange(start_frame, start_frame + count, dtype=np.int64)
    index = np.asarray(frame_index).reshape(-1)
    if index.dtype.kind not in "iu" or len(index) != count:
        raise InputError(f"frame_index must hold one integer clip index per frame: got {index.dtype} "
                         f"{list(np.shape(frame_index))} for {count} frames")
    if count and (index[0] != start_frame or np.any(np.diff(index) <= 0)):
        raise InputError(f"frame_index must increase and start at start_frame ({start_frame}); got "
                         f"{index[:4].tolist()}...")
    return index.astype(np.int64)


def check_run(frames: np.ndarray, boxes: np.ndarray, mel: np.ndarray, start_frame: int, fps: float,
              last: int | None = None) -> None:
    """InputError naming the problem unless the run's arrays fit together (`last`: the clip index of the last
    frame, by default start_frame + n - 1)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise InputError(f"frames must be UINT8 [n, H, W, 3] RGB with n >= 1, got {frames.dtype} {list(frames.shape)}")
    if boxes.shape != (len(frames), 4):
        raise InputError(f"face_boxes must be [n, 4] (x1, y1, x2, y2), one per frame: got {list(boxes.shape)} for "
                         f"{len(frames)} frames", "bad_face_geometry")
    if not np.isfinite(boxes).all():
        raise InputError("face_boxes must be finite numbers", "bad_face_geometry")
    if mel.ndim != 2 or mel.shape[0] != MEL_BINS:
        raise InputError(f"mel must be [80, T] (audio_features' Wav2Lip log-mel), got {list(mel.shape)}")
    if not np.isfinite(mel).all():
        raise InputError("mel contains NaN or infinite values; recompute it with audio_features", "bad_audio")
    if mel.shape[1] < MEL_STEP:
        raise InputError(f"mel has {mel.shape[1]} frames; Wav2Lip needs at least {MEL_STEP} (0.2 s of speech)",
                         "audio_too_short")
    if not (np.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise InputError(f"fps must be within (0, {MAX_FPS:g}], got {fps}")
    if start_frame < 0:
        raise InputError(f"start_frame must be >= 0, got {start_frame}")
    last = start_frame + len(frames) - 1 if last is None else last
    if mel_start(last, fps) >= mel.shape[1]:
        seconds = mel.shape[1] / MEL_FPS
        raise InputError(
            f"frame {last} starts at {last / fps:.2f} s but the mel covers only {seconds:.2f} s: send the whole "
            "clip's mel with start_frame counted from the clip's first frame, or drop frames past the speech",
            "frames_past_audio",
        )


class Wav2LipRefiner:
    """Regenerates the lower face of each frame of a run with Wav2Lip, conditioned on the clip's speech."""

    def __init__(self, model: Wav2Lip, pads: Sequence[int] = (0, 10, 0, 0), box_smoothing: int = 5,
                 feather: float = 0.15, batch_size: int = 8, device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.pads, self.box_smoothing, self.feather = tuple(pads), box_smoothing, feather
        self.batch_size, self.device = batch_size, torch.device(device)
        if self.device.type == "cuda":  # plosive runs differ in length: every batch size is met here, not per job
            warm_buckets(self.model, lambda n: (torch.zeros(n, 1, MEL_BINS, MEL_STEP, device=self.device),
                                                torch.zeros(n, 6, IMG_SIZE, IMG_SIZE, device=self.device)),
                         batch_size)

    def face_boxes(self, boxes: np.ndarray, height: int, width: int, runs: list[slice] | None = None) -> np.ndarray:
        """[n, 4] int: the boxes the crops are cut from (padded, clamped, smoothed over each of `runs`, by default
        all of them as one run), or InputError."""
        padded = padded_boxes(boxes, self.pads, height, width)
        if np.any(padded[:, 2] <= padded[:, 0]) or np.any(padded[:, 3] <= padded[:, 1]):
            bad = int(np.flatnonzero((padded[:, 2] <= padded[:, 0]) | (padded[:, 3] <= padded[:, 1]))[0])
            raise InputError(f"face_boxes[{bad}] = {boxes[bad].tolist()} is empty or outside the {width}x{height} "
                             "frame; send x1, y1, x2, y2 in pixels of the frame", "bad_face_geometry")
        smoothed = np.concatenate([smooth_boxes(padded[run], self.box_smoothing)
                                   for run in runs or [slice(None)]])
        sizes = np.minimum(smoothed[:, 2] - smoothed[:, 0], smoothed[:, 3] - smoothed[:, 1])
        if sizes.min() < MIN_FACE_PX:
            bad = int(np.argmin(sizes))
            raise InputError(f"the face in frame {bad} is only {int(sizes[bad])} px across; the mouth pass needs "
                             f"at least {MIN_FACE_PX} px", "face_too_small")
        return smoothed

    def predict_faces(self, crops_bgr: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """[n, 96, 96, 3] float32 BGR 0..255 from [n, 96, 96, 3] uint8 BGR crops and [n, 80, 16] mel windows."""
        out = np.empty(crops_bgr.shape, dtype=np.float32)
        for start in range(0, len(crops_bgr), self.batch_size):
            stop = start + self.batch_size
            faces = torch.from_numpy(network_inputs(crops_bgr[start:stop])).to(self.device)
            audio = torch.from_numpy(np.ascontiguousarray(windows[start:stop, None])).to(self.device)
            with torch.inference_mode():
                pred = padded_forward(self.model, audio, faces, largest=self.batch_size)
            out[start:stop] = pred.float().cpu().numpy().transpose(0, 2, 3, 1) * 255.0
        return out

    def refine(self, frames: np.ndarray, boxes: np.ndarray, mel: np.ndarray, start_frame: int = 0,
               fps: float = 25.0, contours: np.ndarray | None = None,
               frame_index: np.ndarray | None = None) -> np.ndarray:
        """frames [n, H, W, 3] uint8 RGB, boxes [n, 4] x1, y1, x2, y2 (the face detector's), mel [80, T] of the
        whole clip, start_frame = the clip index of frames[0] -> new frames [n, H, W, 3] uint8. With `contours`
        [n, K, 2] (each frame's outer lip contour) only the mouth region is blended back. `frame_index` [n] (each
        frame's clip index) makes the frames several runs one after another: each is what its own call would
        give (its boxes smoothed on their own), and all go through the network together."""
        frames = np.asarray(frames)
        boxes = np.asarray(boxes, dtype=np.float32)
        mel = np.asarray(mel, dtype=np.float32)
        start_frame, fps = int(start_frame), float(fps)
        index = frame_indices(start_frame, len(frames), frame_index)
        check_run(frames, boxes, mel, start_frame, fps, int(index[-1]) if len(index) else None)
        if contours is not None:
            contours = np.asarray(contours, np.float32)
            if contours.ndim != 3 or contours.shape[0] != len(frames) or contours.shape[1] < 3 \
                    or contours.shape[2] != 2 or not np.isfinite(contours).all():
                raise InputError(f"mouth_contour must be [n, K >= 3, 2] finite pixels, one contour per frame; got "
                                 f"{list(contours.shape)} for {len(frames)} frames", "bad_face_geometry")
        height, width = frames.shape[1:3]
        coords = self.face_boxes(boxes, height, width, runs_of(index))
        # The network was trained on BGR crops (cv2.imread order); our frames are RGB.
        crops = np.stack([
            cv2.resize(np.ascontiguousarray(frame[y1:y2, x1:x2, ::-1]), (IMG_SIZE, IMG_SIZE))
            for frame, (x1, y1, x2, y2) in zip(frames, coords)
        ])
        faces = self.predict_faces(crops, mel_windows(mel, index, fps))
        out = frames.copy()
        # The prediction stays float through resize and blend (the official truncates it to uint8 first).
        for k, (frame, face, (x1, y1, x2, y2)) in enumerate(zip(out, faces, coords)):
            resized = cv2.resize(face, (int(x2 - x1), int(y2 - y1)))[..., ::-1]
            blend_into(frame, (x1, y1, x2, y2), resized, self.feather, None if contours is None else contours[k])
        return out
