"""Launch a real tritonserver over our model repositories.

The system `tritonserver` (NGC container) is used when it is on PATH; otherwise the binary shipped in the
nvidia-pytriton wheel, with a private backends folder holding the python-backend stub built for the
running interpreter. The server runs in its own process group so that stopping it also stops every
python-backend stub (no orphans).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from python_backends.licences import COMMERCIAL_ENV
from python_backends.weights import WEIGHTS_ENV

from .stub_watchdog import ADMIN_HEADER, StubWatchdog

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


# what the dynamic loader prints when the python-backend stub's binary cannot start
STUB_LOAD_ERROR = "error while loading shared libraries"


class ServerError(RuntimeError):
    """tritonserver could not be found, started or reached; the message says what to do."""


@dataclass(frozen=True)
class ServerOptions:
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    repositories: tuple[Path, ...] = (PROJECT_ROOT / "model_repository", PROJECT_ROOT / "ensembles")
    model_config_name: str | None = None
    weights: Path | None = None
    log_verbose: int = 0
    commercial: bool = False  # refuse weights whose licence forbids commercial use (licences.py)
    startup_timeout_s: float = 300.0
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    # Reload a model whose python-backend stub died (Triton 2.51 never restarts one): stub_watchdog.py.
    restart_dead_stubs: bool = True
    models: tuple[str, ...] = ()  # load only these (needs restart_dead_stubs' explicit model control); () = all

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_port(host: str, port: int, flag: str) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise ServerError(
                f"port {port} on {host} is already in use; stop what holds it or pass {flag} with a free port"
            ) from None


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _pytriton_package() -> Path:
    """The nvidia-pytriton package folder wherever this interpreter imports it from (site-packages, the user's, a
    `pip install --target` folder on PYTHONPATH), without importing it; its bundled libraries sit beside it."""
    spec = importlib.util.find_spec("pytriton")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else _site_packages() / "pytriton"


def _stub_numpy_major() -> int | None:
    """numpy's major version as the python-backend stub sees it. Its embedded interpreter ignores PYTHONPATH
    (checked: PYTHONPATH reaches the stub's environment but not its sys.path), so where this process's numpy may
    have come from PYTHONPATH, ask this interpreter in isolated mode (-I); elsewhere it is the one imported here."""
    if not os.environ.get("PYTHONPATH"):
        import numpy

        return int(numpy.__version__.split(".")[0])
    probe = subprocess.run([sys.executable, "-I", "-c", "import numpy; print(numpy.__version__)"],
                           capture_output=True, text=True, timeout=60)
    return int(probe.stdout.split(".")[0]) if probe.returncode == 0 and probe.stdout.strip() else None


def _cache_folder(kind: str, source: Path) -> Path:
    """Our cache's folder for what is made from `source` (named by a digest of its path: stable across runs, where
    Python's str hash is salted per process)."""
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:10]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "talkinghead"
    return cache / f"{kind}-{digest}"


def _libpython_dir() -> Path | None:
    """A folder holding only a link to this interpreter's shared libpython, for the stubs' LD_LIBRARY_PATH.

    The stub links libpython3.X dynamically; the loader would pick the system one, whose patch release may not match
    this interpreter's stdlib extensions (seen: Debian 3.11.2 libpython under a pyenv 3.11.7 venv makes `import ssl`
    fail). The interpreter's LIBDIR itself stays off the path: for a distribution's Python it is the system library
    folder (/usr/lib/x86_64-linux-gnu), and every library there, an apt-installed cuDNN or NCCL say, would then be
    found before the CUDA libraries that torch's wheels bring, in every model's process."""
    name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not name:
        return None
    library = Path(sysconfig.get_config_var("LIBDIR") or "") / name
    if not library.is_file():
        return None
    folder = _cache_folder(f"libpython-py{sys.version_info.major}.{sys.version_info.minor}", library)
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # made by an earlier or concurrent launch
        (folder / name).symlink_to(library)
    return folder


def _pytriton_backend_dir(triton_root: Path) -> Path:
    """A backends folder whose python backend carries the stub for this interpreter."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = triton_root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"nvidia-pytriton has no python-backend stub for Python {version}; use 3.10-3.13")
    backends = _cache_folder(f"triton-backends-py{version}", triton_root)
    python_dir = backends / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in [stub, *(triton_root / "backends" / "python").iterdir()]:
        if source.is_file():
            target = python_dir / source.name
            if not target.exists() or target.stat().st_size != source.stat().st_size:
                shutil.copy2(source, target)
    return backends


def server_command(options: ServerOptions, admin_token: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that start tritonserver with our repositories."""
    env = dict(os.environ)
    # The python-backend stub embeds an interpreter that finds packages through the first python3 on
    # PATH: put this interpreter's bin/ first or every model fails with "No module named 'numpy'".
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if options.weights is not None:
        env[WEIGHTS_ENV] = str(Path(options.weights).resolve())
    if options.commercial:
        env[COMMERCIAL_ENV] = "1"
    env.update(options.env)
    if env.get("PYTHONPATH"):
        logger.warning("PYTHONPATH is set, but tritonserver's python-backend stubs ignore it: the models import "
                       "only from %s's site-packages and the working directory; install what they need there "
                       "(pip install, not pip install --target)", sys.executable)
    if (_stub_numpy_major() or 0) >= 2:
        # Seen on the GPU image (numpy 2.x): numeric outputs survive through dlpack, but every BYTES output
        # (model_info, reports, chunk_info) reaches the client empty with this numpy-1 python-backend stub.
        logger.warning("numpy 2 in %s's site-packages: BYTES outputs come back empty from the python backend; "
                       "install numpy<2 there (pip install 'numpy<2'; one on PYTHONPATH does not reach the "
                       "backend)", sys.executable)
    system = shutil.which("tritonserver")
    if system:
        argv = [system]
    else:
        package = _pytriton_package()
        triton_root = package / "tritonserver"
        binary = triton_root / "bin" / "tritonserver"
        if not binary.exists():
            raise ServerError(
                "no tritonserver found: install the server extra (pip install -e '.[server]', which brings "
                "nvidia-pytriton) or run inside the NGC Triton container"
            )
        libs = [str(package.parent / "nvidia_pytriton.libs")]  # the wheel's bundled libraries (libcudart ...)
        libpython = _libpython_dir()  # this interpreter's own shared libpython first
        if libpython is not None:
            libs.insert(0, str(libpython))
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (*libs, env.get("LD_LIBRARY_PATH")) if p)
        argv = [str(binary), f"--backend-directory={_pytriton_backend_dir(triton_root)}"]
    for repository in options.repositories:
        if not Path(repository).is_dir():
            raise ServerError(f"model repository {repository} does not exist")
        argv.append(f"--model-repository={Path(repository).resolve()}")
    argv += [
        f"--http-address={options.host}",
        f"--http-port={options.http_port}",
        f"--grpc-address={options.host}",
        f"--grpc-port={options.grpc_port}",
        f"--metrics-port={options.metrics_port}",
        f"--log-verbose={options.log_verbose}",
        "--strict-readiness=true",
        # Clients may keep connections open; do not wait Triton's default 30 s for them on shutdown.
        "--exit-timeout-secs=5",
    ]
    if options.restart_dead_stubs:
        # Every model loads at start as before; explicit control lets the stub watchdog reload one. The
        # repository API (load, unload, and load with uploaded files, which runs their code) answers only
        # requests carrying this server's admin token.
        argv += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in options.models or ("*",))]
        if admin_token:
            argv += [f"--http-restricted-api=model-repository:{ADMIN_HEADER}={admin_token}",
                     f"--grpc-restricted-protocol=model-repository:{ADMIN_HEADER}={admin_token}"]
    elif options.models:
        raise ServerError("loading a subset of the models needs restart_dead_stubs (explicit model control)")
    if options.model_config_name:
        argv.append(f"--model-config-name={options.model_config_name}")
    argv += list(options.extra_args)
    return argv, env


class TritonServer:
    """A running tritonserver; use as a context manager, or start() / stop()."""

    def __init__(self, options: ServerOptions, log_path: Path | None = None) -> None:
        self.options = options
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None
        self.watchdog: StubWatchdog | None = None
        self.admin_token: str | None = None  # unlocks the repository API (watchdog only); never logged

    def start(self) -> TritonServer:
        opts = self.options
        for port, flag in ((opts.http_port, "--http-port"), (opts.grpc_port, "--grpc-port"),
                           (opts.metrics_port, "--metrics-port")):
            _check_port(opts.host, port, flag)
        self.admin_token = secrets.token_hex(16) if opts.restart_dead_stubs else None
        argv, env = server_command(opts, self.admin_token)
        self._log = open(self.log_path, "ab")  # a restart keeps what the last process wrote (its crash)
        try:
            self.process = subprocess.Popen(
                argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as exc:
            raise ServerError(f"cannot start {argv[0]}: {exc}") from None
        try:
            self._wait_ready()
        except BaseException:  # not ready, exited, or interrupted (Ctrl-C, a SIGTERM handler): leave no server behind
            self.stop()
            raise
        if opts.restart_dead_stubs:
            self.watchdog = StubWatchdog(self.process.pid, opts.http_url, {ADMIN_HEADER: self.admin_token}).start()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.startup_timeout_s
        url = f"http://{self.options.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with code {self.process.returncode} while starting:\n{self.log_tail()}"
                )
            unloadable = self._stub_load_error()
            if unloadable:
                # Triton waits on a stub that never started and does not get ready (seen for 500 s on a GPU
                # machine): say why at once instead.
                raise ServerError(f"a python-backend stub cannot start: {unloadable}\nThe library it names "
                                  "must be on LD_LIBRARY_PATH (the nvidia-pytriton wheel bundles its own in "
                                  "nvidia_pytriton.libs beside the pytriton package): reinstall nvidia-pytriton "
                                  "whole rather than linking parts of it")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise ServerError(
            f"tritonserver not ready after {self.options.startup_timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def _stub_load_error(self) -> str:
        """The dynamic loader's refusal to start a stub (a missing shared library) in the log, or ''."""
        found = [line for line in self.log_tail(200).splitlines() if STUB_LOAD_ERROR in line]
        return found[-1].strip() if found else ""

    def exited(self) -> bool:
        """The server process ended by itself (not through stop()): a crash, or a kill from outside."""
        return self.process is not None and self.process.poll() is not None

    def restart(self) -> TritonServer:
        """A new server process on the same ports, repositories and log: what a supervisor does after a crash."""
        self.stop()
        return self.start()

    def crash_reason(self) -> str:
        """The log's most telling fatal line (Triton 2.51's python backend can abort with
        boost::interprocess::lock_exception when a stub dies mid-message), or ''."""
        lines = self.log_tail(400).splitlines()
        for marker in ("what():", "terminate called", "Signal ("):  # the most telling first
            found = [line.strip() for line in lines if marker in line]
            if found:
                return found[-1]
        return ""

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait(self) -> int:
        return self.process.wait() if self.process else 0

    def stop(self, timeout: float = 30.0) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            # SIGTERM lets Triton unload models and stop its stubs; the group kill catches stragglers.
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()
        self._log.close()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# A server that crashes is started again on the same ports, unless it crashed this often in this window: then
# something is wrong beyond one fault and the launcher gives up (a container runtime restarts it with backoff).
MAX_RESTARTS, RESTART_WINDOW_S = 5, 600.0


def serve_forever(options: ServerOptions) -> int:
    """Run until Ctrl-C / SIGTERM, printing endpoints once ready; a tritonserver that exits by itself is started
    again (MAX_RESTARTS per RESTART_WINDOW_S). Returns an exit code."""
    server = TritonServer(options)
    def _request_stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _request_stop)
    restarts: list[float] = []
    try:
        server.start()
        print(f"tritonserver ready (log: {server.log_path})")
        print(f"  HTTP    http://{options.http_url}")
        print(f"  gRPC    {options.grpc_url}")
        print(f"  metrics {options.metrics_url}")
        while True:
            code = server.wait()
            reason = server.crash_reason()
            print(f"tritonserver exited with code {code}{f' ({reason})' if reason else ''}:\n{server.log_tail()}",
                  file=sys.stderr)
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW_S]
            if len(restarts) >= MAX_RESTARTS:
                print(f"giving up: {len(restarts)} restarts in {RESTART_WINDOW_S:.0f} s", file=sys.stderr)
                return code or 1
            restarts.append(now)
            server.restart()  # jobs in flight failed with the process; clients send them again
            print(f"tritonserver restarted on the same ports (restart {len(restarts)})", file=sys.stderr)
    except KeyboardInterrupt:
        print("stopping tritonserver ...")
        return 0
    finally:
        server.stop()
