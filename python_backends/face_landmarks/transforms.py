"""The official HRNet face-alignment crop and heatmap decoding (lib/utils/transforms.py, evaluation.py).

A face is described by a centre and a `scale` in units of 200 pixels (the official datasets' convention);
its crop covers a `200 * scale` square around the centre. The official test pipeline:

* crop: the integer pixel window [ul, br) that `transform_pixel` gives for the 256x256 output's corners,
  zero-padded outside the image, stretched to the full 0..255 range and resized bilinearly (this is what
  `scipy.misc.imresize` did to a float array: `bytescale` then a PIL BILINEAR resize); crops wider than
  512 pixels first shrink the whole image by `scale * 200 / 256` in the same way;
* normalise with the ImageNet mean and std (RGB);
* decode: the arg-max of each 64x64 heatmap, moved a quarter pixel toward the higher neighbour, plus half
  a pixel, mapped back through the inverse crop transform.

One deliberate difference: the official `transform_pixel` truncates the final image coordinates to
integers and adds 1 (a 1-based leftover); we keep the continuous value of the same affine map, so landmarks
are sub-pixel and in 0-based pixel coordinates (pixel centres at integers), like dlib's.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

INPUT_SIZE = 256  # MODEL.IMAGE_SIZE of the W18 experiments
HEATMAP_SIZE = 64  # MODEL.HEATMAP_SIZE
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PIXEL_STD = 200.0  # the official scale unit


def box_to_center_scale(box: np.ndarray, crop_scale: float = 1.25) -> tuple[np.ndarray, float]:
    """Centre and official scale of a face box (x1, y1, x2, y2): the longer side / 200, enlarged by 1.25."""
    x1, y1, x2, y2 = (float(v) for v in box)
    center = np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0], dtype=np.float64)
    return center, max(x2 - x1, y2 - y1) / PIXEL_STD * crop_scale


def _to_output(point: float, center: float, scale: float, res: int) -> float:
    """get_transform: an image coordinate in the frame of a res x res crop (continuous)."""
    h = PIXEL_STD * scale
    return res * (point - center) / h + res * 0.5


def _to_image(point: np.ndarray, center: np.ndarray, scale: float, res: int) -> np.ndarray:
    """Inverse of get_transform: crop/heatmap coordinates back to the image (continuous)."""
    h = PIXEL_STD * scale
    return (point - res * 0.5) * (h / res) + center


def _corner(point: tuple[float, float], center: np.ndarray, scale: float, res: int) -> np.ndarray:
    # transform_pixel(pt, invert=1): 1-based in, truncation toward zero, 1-based out.
    raw = _to_image(np.array(point, dtype=np.float64) - 1.0, center, scale, res)
    return np.trunc(raw).astype(np.int64) + 1


def _bytescale(array: np.ndarray) -> np.ndarray:
    """scipy.misc.bytescale with default arguments: stretch the array's own min..max to 0..255."""
    low, high = float(array.min()), float(array.max())
    span = high - low if high > low else 1.0
    return (np.clip((array - low) * (255.0 / span), 0.0, 255.0) + 0.5).astype(np.uint8)


def _imresize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    image = Image.fromarray(_bytescale(array.astype(np.float32)))
    return np.asarray(image.resize((width, height), resample=Image.BILINEAR))


def crop_face(image: np.ndarray, center: np.ndarray, scale: float, res: int = INPUT_SIZE) -> np.ndarray:
    """lib/utils/transforms.py `crop` with rot=0: uint8 [res, res, 3] crop of an RGB uint8 image."""
    img = image
    center = np.asarray(center, dtype=np.float64)
    sf = scale * PIXEL_STD / res
    if sf >= 2:
        # Large faces: shrink the whole image first so the final resize is a small one.
        height, width = img.shape[:2]
        if math.floor(max(height, width) / sf) < 2:
            return np.zeros((res, res, img.shape[2]), dtype=np.uint8)
        img = _imresize(img, math.floor(height / sf), math.floor(width / sf))
        center = center / sf
        scale = scale / sf
    ul = _corner((0.0, 0.0), center, scale, res)
    br = _corner((float(res), float(res)), center, scale, res)
    window = np.zeros((br[1] - ul[1], br[0] - ul[0], img.shape[2]), dtype=np.float32)
    height, width = img.shape[:2]
    new_x = max(0, -ul[0]), min(br[0], width) - ul[0]
    new_y = max(0, -ul[1]), min(br[1], height) - ul[1]
    old_x = max(0, ul[0]), min(width, br[0])
    old_y = max(0, ul[1]), min(height, br[1])
    if new_x[1] > new_x[0] and new_y[1] > new_y[0]:
        window[new_y[0] : new_y[1], new_x[0] : new_x[1]] = img[old_y[0] : old_y[1], old_x[0] : old_x[1]]
    return _imresize(window, res, res)


def normalise(crops: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] RGB crops -> float32 [N, 3, H, W] with the ImageNet mean and std."""
    scaled = (crops.astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(scaled.transpose(0, 3, 1, 2))


def decode_heatmaps(heatmaps: np.ndarray) -> np.ndarray:
    """[N, P, H, W] heatmaps -> [N, P, 2] continuous heatmap coordinates (x, y); pixel k spans [k, k+1).

    get_preds + the quarter-offset refinement of decode_preds: the arg-max moves 0.25 toward its higher
    neighbour on each axis (peaks on the border are left alone), then + 0.5 to the pixel centre. (get_preds
    also zeroes points whose maximum is <= 0; the arg-max is kept here, it is still the best guess.)
    """
    n, p, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, p, h * w)
    index = flat.argmax(axis=2)
    x, y = index % w, index // w
    ni, pi = np.meshgrid(np.arange(n), np.arange(p), indexing="ij")
    interior = (x > 0) & (x < w - 1) & (y > 0) & (y < h - 1)
    xc, yc = np.clip(x, 1, w - 2), np.clip(y, 1, h - 2)
    dx = np.sign(heatmaps[ni, pi, yc, xc + 1] - heatmaps[ni, pi, yc, xc - 1])
    dy = np.sign(heatmaps[ni, pi, yc + 1, xc] - heatmaps[ni, pi, yc - 1, xc])
    coords = np.stack([x, y], axis=-1).astype(np.float64)
    coords += np.where(interior[..., None], 0.25 * np.stack([dx, dy], axis=-1), 0.0)
    return coords + 0.5


def heatmap_to_image(
    coords: np.ndarray, center: np.ndarray, scale: float, res: int = HEATMAP_SIZE
) -> np.ndarray:
    """Heatmap coordinates of one face ([P, 2]) -> image pixel coordinates through the inverse crop."""
    return _to_image(np.asarray(coords, dtype=np.float64), np.asarray(center, dtype=np.float64), scale, res)


def image_to_heatmap(
    points: np.ndarray, center: np.ndarray, scale: float, res: int = HEATMAP_SIZE
) -> np.ndarray:
    """Image pixel coordinates -> continuous heatmap coordinates (the training targets' transform)."""
    points = np.asarray(points, dtype=np.float64)
    return np.stack([_to_output(points[..., k], float(center[k]), scale, res) for k in range(2)], axis=-1)
