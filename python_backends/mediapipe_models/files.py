"""The MediaPipe .tflite files: taken out of the mediapipe 0.10.14 wheel (downloaded with `pip download --no-deps`,
never installed) into a git-ignored data folder. `python -m python_backends.mediapipe_models.files` (run by the
Makefile's install target) fetches them; nothing downloads at serving time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import WeightsUnavailable

WHEEL = "mediapipe==0.10.14"
LICENCE = "Apache-2.0 (google-ai-edge/mediapipe 0.10.14 wheel: model files and code)"
DATA_ENV = "TALKINGHEAD_MEDIAPIPE_DIR"
DEFAULT_DIR = Path(__file__).resolve().parent / "data"

# Our name -> the file's path inside the wheel.
FILES: dict[str, str] = {
    "face_detection_short_range": "mediapipe/modules/face_detection/face_detection_short_range.tflite",
    "face_detection_full_range_sparse": "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
    "face_landmark": "mediapipe/modules/face_landmark/face_landmark.tflite",
    # Needs MediaPipe's own custom ops (Landmarks2TransformMatrix, ...), which no standalone runtime has: kept for
    # an operator with a build of them, not used by default.
    "face_landmark_with_attention": "mediapipe/modules/face_landmark/face_landmark_with_attention.tflite",
    "pose_detection": "mediapipe/modules/pose_detection/pose_detection.tflite",
    "pose_landmark_full": "mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
}
LICENSE_FILE = "LICENSE"


def data_dir() -> Path:
    value = os.environ.get(DATA_ENV, "").strip()
    return Path(value).expanduser() if value else DEFAULT_DIR


def model_path(name: str, folder: Path | None = None) -> Path | None:
    """The extracted file for `name` (a FILES key), or None before `make install` extracted it."""
    path = (folder or data_dir()) / Path(FILES[name]).name
    return path if path.is_file() else None


def require(name: str, folder: Path | None = None) -> Path:
    path = model_path(name, folder)
    if path is None:
        raise WeightsUnavailable(
            f"no MediaPipe file {Path(FILES[name]).name} in {folder or data_dir()}: run `make install` or "
            f"`python -m python_backends.mediapipe_models.files` (it takes the file out of the {WHEEL} wheel)"
        )
    return path


def extract(wheel: Path, folder: Path) -> list[Path]:
    """Copy FILES (and the licence) out of a mediapipe wheel into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        licence = next((n for n in names if n.endswith(".dist-info/LICENSE")), None)
        for inside in [*FILES.values(), *([licence] if licence else [])]:
            if inside not in names:
                raise WeightsUnavailable(f"{wheel.name} has no {inside}; use the {WHEEL} wheel")
            target = folder / (LICENSE_FILE if inside == licence else Path(inside).name)
            target.write_bytes(archive.read(inside))
            written.append(target)
    return written


def download_wheel(into: Path) -> Path:
    """`pip download --no-deps` the wheel for this interpreter (installing it would pull protobuf<5)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into), WHEEL]
    subprocess.run(command, check=True)
    wheels = sorted(into.glob("mediapipe-*.whl"))
    if not wheels:
        raise WeightsUnavailable(f"pip download {WHEEL} produced no wheel in {into}")
    return wheels[0]


def fetch(folder: Path | None = None, wheel: Path | None = None) -> list[Path]:
    """Make sure every file is in `folder`; downloads the wheel only when one is missing."""
    folder = folder or data_dir()
    if all(model_path(name, folder) for name in FILES) and (folder / LICENSE_FILE).is_file():
        return [folder / Path(inside).name for inside in FILES.values()]
    if wheel is not None:
        return extract(wheel, folder)
    with tempfile.TemporaryDirectory() as scratch:
        return extract(download_wheel(Path(scratch)), folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"extract MediaPipe's .tflite files from the {WHEEL} wheel")
    parser.add_argument("--dir", type=Path, default=None, help=f"target folder (default ${DATA_ENV} or {DEFAULT_DIR})")
    parser.add_argument("--wheel", type=Path, default=None, help="an already downloaded mediapipe wheel")
    args = parser.parse_args(argv)
    for path in fetch(args.dir, args.wheel):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
