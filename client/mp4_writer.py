"""The first streaming writer's interface, kept for its callers; the encoder itself is `client/encoding.py`.

New code should use `client.compliance.CompliantVideoWriter` (encode + disclose + sign + audit) or
`client.encoding.StreamingEncoder` (encode only).
"""

from __future__ import annotations

from pathlib import Path

from .encoding import EncodeError, EncodeOptions, StreamingEncoder

__all__ = ["EncodeError", "StreamingMp4Writer"]


class StreamingMp4Writer(StreamingEncoder):
    """H.264 + AAC, as before; `close()` returns the path."""

    def __init__(
        self, path: Path, fps: float, audio: Path | None = None, metadata: dict[str, str] | None = None,
        crf: int = 18, preset: str = "veryfast",
    ) -> None:
        super().__init__(path, fps, audio=audio, options=EncodeOptions("h264", crf, preset), metadata=metadata)

    def close(self) -> Path:  # type: ignore[override]
        return super().close().path
