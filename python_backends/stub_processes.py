"""The python-backend stub processes of a tritonserver, read from /proc (Linux, where Triton runs).

Used by the watchdog (client/stub_watchdog.py: in the launcher, or beside the server in its Kubernetes pod), which
reloads a model whose stub died, and inside the server by BLS callers (triton_io.stream_model), which stop waiting
on a streamed request whose callee's stub died: Triton 2.51 never answers such a request.
"""

from __future__ import annotations

from pathlib import Path

STUB_NAME = "triton_python_backend_stub"
SERVER_NAME = "tritonserver"
DEFAULT_HTTP_PORT = 8000


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name in parentheses may hold spaces
    return fields[0], int(fields[1])


def stub_model(pid: int) -> str | None:
    """The model a live stub process serves, from its argv (`<stub> <repo>/<model>/<version>/model.py ...`)."""
    argv = _argv(pid)
    if len(argv) < 2 or not argv[0].endswith(STUB_NAME):
        return None
    script = Path(argv[1])
    return script.parents[1].name if script.name == "model.py" and len(script.parents) > 2 else None


def live_stubs(server_pid: int) -> dict[int, str]:
    """pid -> model of every running (not zombie) python-backend stub started by the server `server_pid`."""
    stubs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        stat = _stat(pid)
        if stat is None or stat[1] != server_pid or stat[0] in ("Z", "X"):
            continue
        model = stub_model(pid)
        if model is not None:
            stubs[pid] = model
    return stubs


def _argv(pid: int) -> list[str]:
    try:
        return [part.decode(errors="replace") for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return []


def tritonserver_pid(http_port: int) -> int | None:
    """The running tritonserver whose HTTP endpoint is `http_port` (from its argv), None when there is none. For a
    watchdog beside the server rather than its parent (a sidecar sharing the pod's process namespace); matching the
    port keeps it off other servers on the same host."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not alive(int(entry.name)):
            continue
        argv = _argv(int(entry.name))
        if not argv or Path(argv[0]).name != SERVER_NAME:
            continue
        ports = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--http-port=")]
        if (ports[-1] if ports else str(DEFAULT_HTTP_PORT)) == str(http_port):
            return int(entry.name)
    return None


def sibling_stubs(model: str) -> set[int]:
    """Inside a stub: the pids of the running stubs of `model` in the same server (empty without /proc)."""
    import os

    return {pid for pid, name in live_stubs(os.getppid()).items() if name == model}


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")
