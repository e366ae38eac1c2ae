"""Shared fixtures: sample media, one real tritonserver per test session, clients for both protocols."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from profile_repositories import served_profile

from client.cli import SAMPLES
from client.server import ServerOptions, TritonServer, free_port
from client.triton_client import Endpoint, TalkingHeadClient

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session", autouse=True)
def talkinghead_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private home for the development signing credential and the audit log (never the user's ~/.config)."""
    home = tmp_path_factory.mktemp("talkinghead-home")
    os.environ["TALKINGHEAD_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


SERVER_LOG_LINES, SERVER_LOG_LINE_CHARS = 40, 1500


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test's report ends with every tritonserver log written while it ran: a python-backend stub that
    died leaves its reason (and every thread's Python stack: triton_io.trace_crashes) only there, and CI keeps
    nothing but the report."""
    outcome = yield
    report = outcome.get_result()
    factory = getattr(item.config, "_tmp_path_factory", None)
    if not report.failed or factory is None:
        return
    for log in sorted(factory.getbasetemp().glob("*/*.log")):
        if log.parent.is_symlink() or log.stat().st_mtime < call.start or "triton" not in log.name:
            continue
        tail = log.read_text(errors="replace").splitlines()[-SERVER_LOG_LINES:]
        report.sections.append((f"{log.parent.name}/{log.name} (last {SERVER_LOG_LINES} lines)",
                                "\n".join(line[:SERVER_LOG_LINE_CHARS] for line in tail)))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--model-config-name", default=None,
                     help="serve the session's tritonserver with this config profile (e.g. gpu), its KIND_GPU "
                          "instances moved to the CPU (tests/profile_repositories.py)")


@pytest.fixture(scope="session")
def triton_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[ServerOptions]:
    """The project's real repositories served by a real tritonserver (CPU defaults, or the --model-config-name
    profile on the CPU; no --weights)."""
    options = ServerOptions(
        http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
        # An empty weights root: the session tests the shipped CPU defaults, never a stray local folder.
        weights=tmp_path_factory.mktemp("no-weights"), **served_profile(request.config, tmp_path_factory),
    )
    server = TritonServer(options, log_path=tmp_path_factory.mktemp("triton") / "tritonserver.log")
    server.start()
    try:
        yield options
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fast_keepalive_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerOptions]:
    """A private tritonserver whose streaming models send a keep-alive on any request silent for
    keepalive_server.FAST_KEEPALIVE_S, so tests see keep-alives whatever the machine's speed."""
    from keepalive_server import fast_keepalive_repositories

    root = tmp_path_factory.mktemp("keepalive-repositories")
    options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                            repositories=fast_keepalive_repositories(root),
                            weights=tmp_path_factory.mktemp("no-weights"))
    server = TritonServer(options, log_path=root / "tritonserver.log")
    server.start()
    try:
        yield options
    finally:
        server.stop()


def _postgres_binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on a loopback port, for the gateway's store; skipped where no server
    binaries are installed (Debian's postgresql package puts them in /usr/lib/postgresql/<version>/bin)."""
    pytest.importorskip("psycopg")
    bindir = _postgres_binaries()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
    folder = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the postgres user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start postgres")
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    subprocess.run(as_user + [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen(as_user + [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k",
                                         str(folder), "-h", "127.0.0.1", "-c", "fsync=off"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(url).close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("postgres did not start")
            time.sleep(0.2)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_url: str):
    """`postgres_database()`: the URL of a new, empty database on the session's PostgreSQL server."""
    import psycopg

    def create() -> str:
        name = f"t_{secrets.token_hex(8)}"
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return postgres_url.rsplit("/", 1)[0] + "/" + name

    return create


@pytest.fixture(params=["grpc", "http"])
def client(request: pytest.FixtureRequest, triton_server: ServerOptions) -> Iterator[TalkingHeadClient]:
    url = triton_server.grpc_url if request.param == "grpc" else triton_server.http_url
    with TalkingHeadClient(Endpoint(url, request.param)) as talking_head:
        yield talking_head


@pytest.fixture
def grpc_client(triton_server: ServerOptions) -> Iterator[TalkingHeadClient]:
    with TalkingHeadClient(Endpoint(triton_server.grpc_url, "grpc")) as talking_head:
        yield talking_head


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    """A fresh gateway database per test: SQLite, and PostgreSQL where its server binaries exist."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    return request.getfixturevalue("postgres_database")()


class _FakeTritonError(Exception):
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


def _fake_pb_utils():
    """A small stand-in for `triton_python_backend_utils`, enough to run our model.py adapters in-process."""
    import types

    import numpy as np

    module = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, np.asarray(array)

        @classmethod
        def from_dlpack(cls, name, capsule):
            return cls(name, np.from_dlpack(capsule))

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

        def is_cpu(self):
            return True

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self.output_tensors, self.error = list(output_tensors), error

    class InferenceRequest:
        def __init__(self, inputs=(), **_):
            self.inputs = list(inputs)

    def get_tensor(holder, name):
        tensors = holder.inputs if isinstance(holder, InferenceRequest) else holder.output_tensors
        return next((t for t in tensors if t.name() == name), None)

    class Logger:
        messages: list = []

        @classmethod
        def _log(cls, text):
            cls.messages.append(text)

        log_info = log_warn = log_error = log_verbose = _log

    class TritonModelException(Exception):
        pass

    class MetricFamily:
        """Custom metrics: every value set lands in `module.metrics[(family, sorted labels)]`."""

        GAUGE, COUNTER = "gauge", "counter"

        def __init__(self, name, description, kind):
            self.name, self.description, self.kind = name, description, kind

        def Metric(self, labels):  # noqa: N802 - the python backend's spelling
            family, key = self, (self.name, tuple(sorted(labels.items())))

            class Metric:
                def set(self, value):
                    assert family.kind == MetricFamily.GAUGE
                    module.metrics[key] = float(value)

                def value(self):
                    return module.metrics.get(key, 0.0)

            return Metric()

    numpy_of = {"TYPE_UINT8": np.uint8, "TYPE_FP32": np.float32, "TYPE_INT32": np.int32,
                "TYPE_INT64": np.int64, "TYPE_STRING": np.object_}
    module.Tensor, module.InferenceResponse, module.InferenceRequest = Tensor, InferenceResponse, InferenceRequest
    module.TritonError, module.Logger, module.TritonModelException = _FakeTritonError, Logger, TritonModelException
    module.get_input_tensor_by_name = module.get_output_tensor_by_name = get_tensor
    module.triton_string_to_numpy = numpy_of.__getitem__
    module.MetricFamily, module.metrics = MetricFamily, {}
    module.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
    module.using_decoupled_model_transaction_policy = \
        lambda config: bool(config.get("model_transaction_policy", {}).get("decoupled"))
    return module


def _trained_looking_batchnorm(net, seed: int = 0):
    """Random but trained-looking BatchNorm statistics, so that a random network's outputs are not degenerate."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return net.eval()


@pytest.fixture(scope="session")
def random_bn():
    """`random_bn(net, seed=0)`: the network with trained-looking BatchNorm statistics, in eval mode."""
    return _trained_looking_batchnorm


@pytest.fixture
def pb_utils_stand_in():
    """Makes a fresh fake `triton_python_backend_utils` module, for tests that extend it (BLS stand-ins)."""
    return _fake_pb_utils


@pytest.fixture
def fake_pb_utils(monkeypatch: pytest.MonkeyPatch):
    """Installs the fake as `triton_python_backend_utils` and returns python_backends.triton_io bound to it."""
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    monkeypatch.delitem(sys.modules, "python_backends.triton_io", raising=False)
    module = importlib.import_module("python_backends.triton_io")
    yield module
    sys.modules.pop("python_backends.triton_io", None)


@pytest.fixture(scope="session")
def sample_face(samples):
    """The sample photo, its dlib 68 landmarks, and a landmarker for frames of the same shot.

    The landmarker keeps the photo's face box: generated frames move the face only slightly, and a fixed
    box measures what moved inside it rather than re-detection noise.
    """
    import dlib
    import numpy as np
    from PIL import Image

    from python_backends.weights import package_path

    image = np.asarray(Image.open(samples / "astronaut.png").convert("RGB"))
    predictor = dlib.shape_predictor(
        str(package_path("face_recognition_models", "models/shape_predictor_68_face_landmarks.dat"))
    )
    rect = max(dlib.get_frontal_face_detector()(image, 1), key=lambda r: r.area())

    def landmarks(frame):
        return np.array([[p.x, p.y] for p in predictor(frame, rect).parts()], np.float64)

    return image, landmarks(image), landmarks


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models' tensors are too small for intra-op parallelism: a second thread only adds barrier waits, which
    cost several times the work itself when the machine's other core is busy. Use it per module with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
