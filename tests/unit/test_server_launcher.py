"""client/server.py's launcher without a real tritonserver: a stand-in process takes its place."""

from __future__ import annotations

import sys
import sysconfig
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


def test_a_stub_that_cannot_load_its_libraries_fails_the_start_at_once(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton waits on a python-backend stub that the dynamic loader refused (seen: 500 s without getting ready on
    a GPU machine whose pytriton libraries were not beside the package): the launcher reads the loader's line in the
    log, stops the server and says what is missing."""
    line = ("/cache/triton_python_backend_stub: error while loading shared libraries: libcudart-09529672.so.12.6.77: "
            "cannot open shared object file: No such file or directory")

    def command(options: ServerOptions, admin_token: str | None) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-c", f"import time; print({line!r}, flush=True); time.sleep(120)"], {}

    monkeypatch.setattr(server_module, "server_command", command)
    server = TritonServer(_options(60), log_path=tmp_path / "server.log")
    with pytest.raises(ServerError, match="stub cannot start: .*libcudart-09529672") as raised:
        server.start()
    assert "nvidia_pytriton.libs" in str(raised.value) and server.process is None


def test_pytriton_is_found_where_python_imports_it_with_its_libraries(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """nvidia-pytriton installed outside site-packages (pip install --target, on PYTHONPATH): the server binary and
    the libraries bundled beside the package come from there, and the launcher warns that the stubs will not see
    PYTHONPATH (their embedded interpreter ignores it)."""
    import logging

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    root = tmp_path / "target" / "pytriton"
    for path in (root / "tritonserver" / "bin" / "tritonserver",
                 root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
                 root / "tritonserver" / "backends" / "python" / "libtriton_python.so", root / "__init__.py"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path / "target"))
    monkeypatch.delitem(sys.modules, "pytriton", raising=False)
    monkeypatch.setattr(server_module.shutil, "which", lambda name: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "target"))
    with caplog.at_level(logging.WARNING, logger=server_module.__name__):
        argv, env = server_module.server_command(_options(1))
    assert argv[0] == str(root / "tritonserver" / "bin" / "tritonserver")
    assert str(tmp_path / "target" / "nvidia_pytriton.libs") in env["LD_LIBRARY_PATH"].split(":")
    assert any("PYTHONPATH is set" in record.getMessage() for record in caplog.records)
    # this interpreter's libpython comes first, alone: its LIBDIR may be the system's library folder
    libdir = sysconfig.get_config_var("LIBDIR")
    assert libdir not in env["LD_LIBRARY_PATH"].split(":")
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        first = Path(env["LD_LIBRARY_PATH"].split(":")[0])
        assert first.is_relative_to(tmp_path / "cache")
        (link,) = first.iterdir()
        assert link.resolve() == (Path(libdir) / sysconfig.get_config_var("INSTSONAME")).resolve()
        assert server_module.server_command(_options(1))[1]["LD_LIBRARY_PATH"] == env["LD_LIBRARY_PATH"]
