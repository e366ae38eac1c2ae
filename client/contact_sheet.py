"""A contact sheet a reviewer can read: per segment a few frames, the verdict and every gate's key number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

THUMB = 160  # px, longer side of each frame thumbnail
TEXT_W = 560
COLOURS = {"pass": (30, 130, 60), "fail": (190, 30, 30), "unavailable": (140, 110, 20), "blocked": (120, 0, 120)}


class SegmentThumbnails:
    """Keeps the first, middle and last frame of every segment while the video streams (small copies only)."""

    def __init__(self) -> None:
        self.frames: dict[int, dict[int, np.ndarray]] = {}

    def add(self, segment: int, start_frame: int, frames: np.ndarray) -> None:
        kept = self.frames.setdefault(segment, {})
        for offset in (0, len(frames) // 2, len(frames) - 1):
            if len(frames):
                kept[start_frame + offset] = _thumbnail(frames[offset])

    def pick(self, segment: int, start: int, count: int) -> list[np.ndarray]:
        kept = self.frames.get(segment, {})
        wanted = (start, start + count // 2, start + count - 1)
        keys = sorted(kept)
        return [kept[min(keys, key=lambda k: abs(k - w))] for w in wanted] if keys else []


def _thumbnail(frame: np.ndarray) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(frame, np.uint8))
    image.thumbnail((THUMB, THUMB))
    return np.asarray(image)


def _gate_line(gate: dict) -> str:
    name, status = gate["gate"], gate["status"]
    numbers = gate.get("summary", "")  # each gate writes its own line (python_backends/quality/gates/)
    frames = gate.get("frames") or []
    where = f" @ frames {frames[:4]}{'...' if len(frames) > 4 else ''}" if status == "fail" and frames else ""
    return f"{name:<15}{status:<12}{numbers}{where}"


def render_contact_sheet(report: dict, thumbnails: SegmentThumbnails, path: Path) -> Path:
    font = ImageFont.load_default()
    segments = report["segments"]
    row_h = max(THUMB, 14 * 11) + 10
    header_h = 70
    width = 3 * (THUMB + 6) + TEXT_W
    sheet = Image.new("RGB", (width, header_h + row_h * max(1, len(segments))), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    verdict = report["verdict"]
    draw.text((8, 6), f"QA verdict: {verdict}   engine: {report['engine']}   frames: {report['frames']} at "
              f"{report['fps']:g} fps   re-rolls: {report['rerolls']}", fill=COLOURS.get(
                  "fail" if verdict == "needs_review" else "pass"), font=font)
    identity = report["identity"]
    windows = ", ".join(f"{w['start_s']:g}-{w['end_s']:g}s {w['mean_cosine']:.3f}" for w in identity["windows"])
    draw.text((8, 24), f"identity ({identity['embedder']}, threshold {identity['threshold']:g}): {windows}",
              fill=(0, 0, 0), font=font)
    clip = report.get("lipsync_clip") or {}
    draw.text((8, 42), f"lip-sync over the clip: {clip.get('reason', 'n/a')}", fill=(0, 0, 0), font=font)
    fps = report["fps"]
    for row, segment in enumerate(segments):
        top = header_h + row * row_h
        for col, thumb in enumerate(thumbnails.pick(segment["segment"], segment["start_frame"], segment["frames"])):
            sheet.paste(Image.fromarray(thumb), (6 + col * (THUMB + 6), top))
        x = 3 * (THUMB + 6) + 6
        start_s = segment["start_frame"] / fps
        draw.text((x, top), f"segment {segment['segment']}  {start_s:.2f}-{start_s + segment['frames'] / fps:.2f} s  "
                  f"attempt {segment['attempt']}  -> {segment['verdict']}", fill=COLOURS[segment["verdict"]], font=font)
        for i, gate in enumerate(segment["gates"]):
            draw.text((x, top + 14 * (i + 1)), _gate_line(gate), fill=COLOURS[gate["status"]], font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
