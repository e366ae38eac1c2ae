"""5-point similarity alignment onto the standard ArcFace 112x112 template.

Same geometry as insightface's python-package/insightface/utils/face_align.py (`estimate_norm` and
`norm_crop`): a least-squares similarity transform (Umeyama, no reflection) from the five keypoints to
`ARCFACE_TEMPLATE` scaled to the crop size, then cv2.warpAffine with bilinear sampling and a black
border. Our keypoint order (left eye in image, right eye in image, nose, mouth left, mouth right) is the
template's order.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import InputError

# arcface_dst of insightface's face_align.py, in pixels of a 112x112 crop.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def _floating(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points)
    return points if np.issubdtype(points.dtype, np.floating) else points.astype(np.float64)


def umeyama(src: np.ndarray, dst: np.ndarray, estimate_scale: bool = True) -> np.ndarray:
    """3x3 similarity matrix T minimising sum |T(src) - dst|^2 (Umeyama 1991, as in scikit-image).

    The statistics are computed in the points' own precision, as scikit-image does: insightface hands it float32
    keypoints and a float32 template, and cv2.warpAffine's fixed-point sampling turns a float64 solution's
    1e-7 difference into pixels up to 8 levels apart at a few places of a textured crop.
    """
    src, dst = _floating(src), _floating(dst)
    num, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_demean, dst_demean = src - src_mean, dst - dst_mean
    cov = dst_demean.T @ src_demean / num
    d = np.ones(dim)
    if np.linalg.det(cov) < 0:
        d[-1] = -1  # forbid a reflection: keep the best proper rotation
    transform = np.eye(dim + 1)
    u, s, vt = np.linalg.svd(cov)
    rank = int(np.count_nonzero(s > s.max() * dim * np.finfo(np.float64).eps))
    if rank == 0:
        return np.full_like(transform, np.nan)
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(vt) > 0:
            transform[:dim, :dim] = u @ vt
        else:
            flipped = d.copy()
            flipped[-1] = -1
            transform[:dim, :dim] = u @ np.diag(flipped) @ vt
    else:
        transform[:dim, :dim] = u @ np.diag(d) @ vt
    # scikit-image's order of operations: its matrix to the last bit (another order is an ulp off).
    scale = 1.0 / src_demean.var(axis=0).sum() * (s @ d) if estimate_scale else 1.0
    transform[:dim, dim] = dst_mean - scale * (transform[:dim, :dim] @ src_mean)
    transform[:dim, :dim] *= scale
    return transform


def template(size: int = 112) -> np.ndarray:
    """The five template points for a `size` crop, scaled as insightface does for 112k or 128k crops."""
    if size % 112 == 0:
        ratio, shift_x = size / 112.0, 0.0
    elif size % 128 == 0:
        ratio = size / 128.0
        shift_x = 8.0 * ratio  # a 128 crop is the 112 crop with 8 px more on each side
    else:
        raise ValueError(f"ArcFace crops are a multiple of 112 or 128 pixels, not {size}")
    points = ARCFACE_TEMPLATE * np.float32(ratio)  # float32, as insightface's arcface_dst * ratio
    points[:, 0] += np.float32(shift_x)
    return points


def estimate_norm(keypoints5: np.ndarray, size: int = 112) -> np.ndarray:
    """2x3 affine matrix taking image pixels to the aligned crop."""
    points = _floating(keypoints5)  # float32 keypoints stay float32 (see umeyama)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise InputError(f"face_keypoints must be 5 finite (x, y) points, got shape {points.shape}")
    spread = np.sqrt(((points - points.mean(axis=0)) ** 2).sum(axis=1).mean())
    if spread < 1.0:
        raise InputError(
            "face_keypoints are degenerate (all five points within a pixel of each other); "
            "send the keypoints the face detector returned for this face"
        )
    matrix = umeyama(points, template(size))
    if not np.isfinite(matrix).all():
        raise InputError("face_keypoints do not define a face orientation; send the detector's keypoints")
    return matrix[:2, :]


def align_face(image: np.ndarray, keypoints5: np.ndarray, size: int = 112) -> np.ndarray:
    """The aligned `size` x `size` crop of the face whose 5 keypoints are given (same channels as image)."""
    matrix = estimate_norm(keypoints5, size)
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), borderValue=0.0)


def align_batch(images: np.ndarray, keypoints: np.ndarray, size: int = 112) -> np.ndarray:
    """[N, size, size, C] aligned crops, one per (image, keypoints) pair."""
    return np.stack([align_face(image, points, size) for image, points in zip(images, keypoints)])
