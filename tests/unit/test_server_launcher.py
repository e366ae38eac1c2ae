"""client/server.py's launcher without a real tritonserver: a stand-in process takes its place."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from client import server as server_module
from client.server import ServerError, ServerOptions, TritonServer, free_port


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher starts a process that never becomes ready in place of tritonserver."""
    def command(options: ServerOptions, admin_token: str | None) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-c", "import time; time.sleep(120)"], {}

    monkeypatch.setattr(server_module, "server_command", command)


def _options(timeout_s: float) -> ServerOptions:
    return ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                         startup_timeout_s=timeout_s, restart_dead_stubs=False)


def test_a_start_interrupted_while_waiting_leaves_no_server(stand_in: None, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A benchmark cut short by `timeout` (SIGTERM -> SystemExit in its handler) or a Ctrl-C during the wait for
    readiness: __exit__ never runs when __enter__ raises, so start() itself must stop the process it launched."""
    server = TritonServer(_options(60), log_path=tmp_path / "server.log")
    launched = []
    original = server_module.subprocess.Popen

    def popen(*args, **kwargs):
        launched.append(original(*args, **kwargs))
        return launched[-1]

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(server_module.subprocess, "Popen", popen)
    monkeypatch.setattr(server, "_wait_ready", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with server:
            pytest.fail("the server was never ready")
    assert launched and launched[0].poll() is not None and server.process is None


def test_a_server_not_ready_in_time_is_stopped_with_its_log(stand_in: None, tmp_path: Path) -> None:
    server = TritonServer(_options(0.5), log_path=tmp_path / "server.log")
    with pytest.raises(ServerError, match="not ready after"):
        server.start()
    assert server.process is None
