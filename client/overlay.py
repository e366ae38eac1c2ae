"""A PNG a person can look at: the photo with the detected faces, keypoints, landmarks and pose drawn."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps

SELECTED = (40, 220, 90)
OTHER = (160, 160, 160)
KEYPOINT = (255, 70, 70)
LANDMARK = (60, 170, 255)


def render_overlay(photo: bytes, report: dict[str, Any], path: Path) -> Path:
    """Draw the report over the photo (scaled to the size the server worked at) and save a PNG."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(photo))).convert("RGB")
    size = (report["photo"]["width"], report["photo"]["height"])
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)
    radius = max(1, round(max(size) / 300))
    for index, face in enumerate(report.get("faces", [])):
        colour = SELECTED if index == report.get("selected_face") else OTHER
        draw.rectangle(face["box"], outline=colour, width=radius + 1)
        draw.text((face["box"][0], max(0, face["box"][1] - 12)), f"{face['score']:.2f}", fill=colour)
        for x, y in face["keypoints"]:
            draw.ellipse((x - radius * 2, y - radius * 2, x + radius * 2, y + radius * 2), fill=KEYPOINT)
    for x, y in report.get("landmarks", []):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=LANDMARK)
    pose = report.get("head_pose")
    lines = [f"verdict: {report.get('verdict')}"]
    if pose:
        lines.append(f"yaw {pose['yaw']:+.1f}  pitch {pose['pitch']:+.1f}  roll {pose['roll']:+.1f} deg")
    audio = report.get("audio")
    if audio:
        lines.append(f"audio {audio['duration_s']:.2f} s, {audio['loudness_lufs_in']:.1f} -> "
                     f"{audio['loudness_lufs_out']:.1f} LUFS")
    draw.rectangle((0, 0, size[0], 14 * len(lines) + 6), fill=(0, 0, 0))
    for row, line in enumerate(lines):
        draw.text((6, 4 + 14 * row), line, fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
