"""What a path the user named is, when it is not a file the CLI can read."""

from __future__ import annotations

import stat
from pathlib import Path

_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_problem(path: Path) -> str | None:
    """Why `path` is not a regular file to read ("does not exist", "is a folder, not a file", "is a named pipe
    (FIFO), not a regular file", ...), or None when it is one. Reading a pipe or a device could block or never end,
    so callers refuse them before opening anything."""
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    kind = next((name for test, name in _KINDS if test(mode)), "something other than a file")
    return f"is {kind}, not a regular file"
