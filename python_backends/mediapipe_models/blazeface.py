"""BlazeFace (face_detection_short_range.tflite, face_detection_full_range_sparse.tflite) with MediaPipe's own
anchors, decoding and weighted NMS; the five keypoints come from a Face Mesh pass on each face found (BlazeFace
has eyes, nose, mouth centre and ears, but no mouth corners)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..face_detection.faces import Faces
from .crops import rotation_between
from .face_mesh import FaceMesh
from .mesh_layout import five_keypoints
from .pool import InterpreterPool
from .ssd import AnchorOptions, DecoderOptions, Detections, anchors, decode, letterbox, weighted_nms
from .tflite import TFLiteNetwork

SHORT, FULL = "short", "full"
# face_detection_short_range.pbtxt / face_detection_full_range.pbtxt (MediaPipe 0.10.14).
ANCHORS = {
    SHORT: AnchorOptions(128, (8, 16, 16, 16)),
    FULL: AnchorOptions(192, (4,), interpolated_scale_aspect_ratio=0.0),
}
DECODERS = {SHORT: DecoderOptions(num_keypoints=6, min_score=0.5), FULL: DecoderOptions(num_keypoints=6, min_score=0.6)}
INPUT_RANGE = (-1.0, 1.0)
MESH_PRESENCE = 0.5  # below this the mesh did not find a face in the crop: keep BlazeFace's keypoints
# The small-face search: tiles of a quarter of the image's short side (at least 128 px), overlapping by half.
TILES_PER_SIDE = 4
TILE_MIN_SIDE = 128
# The smallest face the whole-image pass (short range, then full range) finds, as a fraction of the image's longer
# side (both models letterbox that side to their input). Measured with the shipped .tflite files: the sample
# photos' faces (astronaut.png, hopper.jpg) downscaled in steps of 1 px from 400 px and pasted at the centre of
# 832x480, 512x512 and 1024x576 canvases of grey and of noise; the floor is the size from which every larger one
# is found: 13-57 px, at most 0.0557 of the longer side (1024x576, noise; 46 px at 832x480).
# perf/bench_mediapipe.py --only expected_face repeats the measurement.
WHOLE_IMAGE_FLOOR = 0.056
# A caller's expected face (face_detector's expected_face_px) at least this many floors large skips the tiles:
# the face shrinking by half within a segment is still found by the whole-image pass.
TILE_SKIP_MARGIN = 2.0
FILES = {SHORT: "face_detection_short_range", FULL: "face_detection_full_range_sparse"}


class BlazeFaceNetwork:
    """One BlazeFace model: letterboxed image in, weighted-NMS detections out, in image pixels."""

    def __init__(self, path: Path, model_range: str, min_score: float, threads: int = 0) -> None:
        self.network = TFLiteNetwork(path, threads)
        self.size = self.network.size[0]
        self.anchors = anchors(ANCHORS[model_range])
        self.decoder = replace(DECODERS[model_range], min_score=min_score)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """boxes [N, 4], scores [N], keypoints [N, 6, 2] (eyes, nose, mouth centre, ears) of one RGB image."""
        tensor, box = letterbox(image, self.size, INPUT_RANGE)
        raw_boxes, raw_scores = self.network(tensor[None])
        found = decode(raw_boxes[0], raw_scores[0], self.anchors, self.size, self.decoder)
        boxes = box.to_image(found.boxes.reshape(-1, 2, 2)).reshape(-1, 4)
        return boxes, found.scores, box.to_image(found.keypoints)


class BlazeFaceEngine:
    """face_detection.detector.Engine: RGB uint8 [B, H, W, 3] -> Faces per image. The short-range model first
    (faces within ~2 m, as portraits are), the full-range one on images where it found none; boxes and scores are
    BlazeFace's, the five keypoints Face Mesh's where the mesh sees a face there. Images run in parallel over
    `detectors` (each worker its own short- and full-range networks; pool.py), the faces' meshes over the mesh's
    own pool."""

    thresholded = True  # detections are already kept at blazeface_min_score: FaceDetector adds no threshold

    def __init__(self, detectors: InterpreterPool[list[BlazeFaceNetwork]], mesh: FaceMesh | None) -> None:
        self.detectors = detectors
        self.mesh = mesh

    @property
    def networks(self) -> list[BlazeFaceNetwork]:
        """The first worker's networks (the one a one-worker pool has): for measurements that call them alone."""
        return self.detectors.workers[0]

    def raw_detect(self, networks: list[BlazeFaceNetwork], image: np.ndarray, expected_face_px: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        for network in networks:
            boxes, scores, points = network(image)
            if len(boxes):
                return boxes, scores, points
        if self.mesh is not None and not self.skips_tiles(image.shape[:2], expected_face_px):
            return self._tiled(image, networks[-1])
        return boxes, scores, points

    @staticmethod
    def skips_tiles(shape: tuple[int, ...], expected_face_px: float) -> bool:
        """The expected face is comfortably within the whole-image pass's reach: a lost face is not searched among
        the tiles (~80 network calls and Face Mesh checks at 832x480), the frame is simply faceless."""
        return expected_face_px >= TILE_SKIP_MARGIN * WHOLE_IMAGE_FLOOR * max(shape)

    def _tiled(self, image: np.ndarray, network: BlazeFaceNetwork) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces too small for the whole-image pass (a few pixels at 192 px): the last network over overlapping
        tiles, each find confirmed by Face Mesh (presence; tiles of texture give BlazeFace false finds the mesh
        rejects), then merged with MediaPipe's weighted NMS. Runs only on images where nothing was found."""
        height, width = image.shape[:2]
        side = max(TILE_MIN_SIDE, min(height, width) // TILES_PER_SIDE)
        found = []
        for y in _starts(height, side):
            for x in _starts(width, side):
                boxes, scores, points = network(np.ascontiguousarray(image[y: y + side, x: x + side]))
                offset = np.array([x, y], np.float32)
                found += [(b + np.tile(offset, 2), s, p + offset) for b, s, p in zip(boxes, scores, points)]
        if found:
            boxes = np.stack([f[0] for f in found])
            _meshes, presence = self.mesh.in_boxes([image] * len(found), boxes, refine=0)
            found = [f for f, p in zip(found, presence) if p >= MESH_PRESENCE]
        if not found:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 6, 2), np.float32)
        merged = weighted_nms(Detections(np.stack([f[0] for f in found]), np.array([f[1] for f in found], np.float32),
                                         np.stack([f[2] for f in found])), network.decoder.min_suppression_iou)
        return merged.boxes, merged.scores, merged.keypoints

    def detect(self, images: np.ndarray, min_face_px: float, expected_face_px: np.ndarray | None = None) -> list[Faces]:
        expected = np.zeros(len(images), np.float32) if expected_face_px is None else expected_face_px

        def one(networks: list[BlazeFaceNetwork], item: tuple[np.ndarray, float]) -> tuple:
            image, face_px = item
            boxes, scores, points = self.raw_detect(networks, image, float(face_px))
            sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            keep = sides >= min_face_px
            return boxes[keep], scores[keep], _five_from_blazeface(points[keep])

        per_image = self.detectors.map(one, list(zip(images, expected)))
        if self.mesh is not None:
            self._mesh_keypoints(images, per_image)
        return [Faces(b.astype(np.float32), s.astype(np.float32), p.astype(np.float32)) for b, s, p in per_image]

    def _mesh_keypoints(self, images: np.ndarray, per_image: list) -> None:
        """A mesh pass (and one re-crop) on every face of every image; replaces the keypoints in place
        where the mesh is confident, keeping BlazeFace's elsewhere (a profile the mesh cannot fit)."""
        crops_of = [image for image, (b, _s, _p) in zip(images, per_image) for _ in range(len(b))]
        if not crops_of:
            return
        boxes = np.concatenate([b for b, _s, _p in per_image])
        rotations = [rotation_between(p[0], p[1], 0.0) for _b, _s, pts in per_image for p in pts]
        meshes, presence = self.mesh.in_boxes(crops_of, boxes, refine=1, rotations=rotations)
        start = 0
        for _b, _s, points in per_image:
            for k in range(len(points)):
                if presence[start + k] >= MESH_PRESENCE:
                    points[k] = five_keypoints(meshes[start + k], *images.shape[2:0:-1])
            start += len(points)


def _five_from_blazeface(points: np.ndarray) -> np.ndarray:
    """Without a mesh: eyes and nose as BlazeFace puts them, both mouth corners at its mouth centre."""
    return np.stack([points[:, 0], points[:, 1], points[:, 2], points[:, 3], points[:, 3]], axis=1)


def _starts(length: int, side: int) -> list[int]:
    """Tile origins covering [0, length) with tiles of `side` overlapping by half (the last one flush)."""
    if length <= side:
        return [0]
    starts = list(range(0, length - side, side // 2))
    return starts + [length - side]
