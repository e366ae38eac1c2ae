"""Bring a model back when its python-backend stub process dies.

Measured on tritonserver 2.51 (nvidia-pytriton 0.7.0): a stub that dies (SIGKILL, the OOM killer, a crash in a
native library) is never restarted. The model and the server keep answering READY while every request to the
model fails with "Stub process '<model>_0_0' is not healthy", and a streamed (decoupled) request the stub held
never gets another response. (Upstream python_backend gained readiness reporting for dead stubs in Dec 2025;
restarting them is still a TODO there.)

The watchdog polls the server's child processes in /proc and, when a stub it has seen is gone, unloads and loads
that model through the repository API, which starts fresh stubs; the server must run with
`--model-control-mode=explicit` (server.py passes it). Requests sent meanwhile fail with a retryable error that
TalkingHeadClient retries for a bounded time.

Where it runs: `talkinghead serve` starts it beside the server it launches (server.py); in the Kubernetes pod it is
the sidecar `talkinghead watchdog` (`run_beside`), which shares the pod's process namespace, finds the server in
/proc by its HTTP port, finds it again after a restart, and takes the admin token that unlocks the repository API
from the environment (`TOKEN_ENV`, from a Secret; deploy/kubernetes/base/triton-deployment.yaml).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from python_backends.stub_processes import alive, live_stubs, tritonserver_pid

logger = logging.getLogger(__name__)

ADMIN_HEADER = "talkinghead-admin"  # HTTP/gRPC header carrying the token that unlocks the repository API
TOKEN_ENV = "TALKINGHEAD_TRITON_ADMIN_TOKEN"  # where the sidecar (and the server's arguments) read that token

@dataclass
class StubEvent:
    """One dead stub and what the watchdog did about it."""

    model: str
    pid: int
    detected_at: float = field(default_factory=time.time)
    reload_s: float | None = None
    error: str | None = None

    @property
    def recovered(self) -> bool:
        return self.reload_s is not None and self.error is None

    def as_dict(self) -> dict:
        return {"model": self.model, "pid": self.pid, "detected_at": self.detected_at, "reload_s": self.reload_s,
                "recovered": self.recovered, "error": self.error}


class StubWatchdog:
    """Polls the stubs of one tritonserver and reloads the model of any stub that died."""

    def __init__(self, server_pid: int, http_url: str, headers: dict[str, str] | None = None, interval_s: float = 1.0,
                 reload_timeout_s: float = 600.0):
        self.server_pid = server_pid
        self.http_url = http_url
        self.headers = dict(headers or {})  # the admin token the repository API requires (server.py)
        self.interval_s = interval_s
        self.reload_timeout_s = reload_timeout_s
        self.events: list[StubEvent] = []
        self._known: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> StubWatchdog:
        if not Path("/proc/self/stat").exists():
            logger.warning("no /proc on this system: dead python-backend stubs will not be restarted")
            return self
        self._known = live_stubs(self.server_pid)
        self._thread = threading.Thread(target=self._run, name="stub-watchdog", daemon=True)
        self._thread.start()
        return self

    def watch(self, stubs: dict[int, str]) -> None:
        """Watch these stubs (pid -> model) from the next poll on; start() watches the server's live stubs."""
        self._known = dict(stubs)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)  # a reload in progress fails fast once the server stops

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # the watchdog must outlive any surprise; the next poll tries again
                logger.exception("stub watchdog check failed")

    def check(self) -> list[StubEvent]:
        """One poll: reload the models whose stubs died since the last poll; the events of this poll."""
        if not alive(self.server_pid):
            return []  # the server itself stopped: its stubs went with it, there is nothing to reload
        current = live_stubs(self.server_pid)
        dead = {pid: model for pid, model in self._known.items() if pid not in current}
        events = []
        for model in sorted(set(dead.values())):
            if self._stop.is_set():
                break
            pid = min(pid for pid, name in dead.items() if name == model)
            event = StubEvent(model, pid)
            logger.warning("python-backend stub of %s (pid %d) died; reloading the model", model, pid)
            started = time.monotonic()
            try:
                self._reload(model)
                event.reload_s = round(time.monotonic() - started, 3)
                logger.warning("%s reloaded in %.1f s", model, event.reload_s)
            except Exception as exc:
                event.error = str(exc) or type(exc).__name__
                logger.error("could not reload %s: %s", model, event.error)
            events.append(event)
            self.events.append(event)
        # New stubs (reloads, ours or an operator's) are watched from now on.
        self._known = live_stubs(self.server_pid) if dead else current
        return events

    def _reload(self, model: str) -> None:
        import tritonclient.http as http

        client = http.InferenceServerClient(self.http_url, network_timeout=self.reload_timeout_s)
        try:
            if not client.is_model_ready(model):
                # Unloaded on purpose (repository API): a dead stub leaves the model READY, this does not.
                raise RuntimeError(f"{model} is not loaded any more; left as it is")
            client.unload_model(model, headers=self.headers)
            deadline = time.monotonic() + 60.0
            while client.is_model_ready(model) and time.monotonic() < deadline:
                time.sleep(0.1)
            client.load_model(model, headers=self.headers)
        finally:
            client.close()


def run_beside(http_url: str, token: str, stop: threading.Event, interval_s: float = 1.0) -> None:
    """Watch the tritonserver serving `http_url` from beside it (not its parent) until `stop` is set: find it in /proc
    by its HTTP port, watch its stubs, and start over with the new server when it restarts."""
    port = int(http_url.rsplit(":", 1)[1])
    watchdog: StubWatchdog | None = None
    while not stop.is_set():
        pid = tritonserver_pid(port)
        if watchdog is not None and watchdog.server_pid != pid:
            watchdog.stop()
            watchdog = None
            logger.warning("tritonserver stopped; waiting for it to start again")
        if watchdog is None and pid is not None:
            watchdog = StubWatchdog(pid, http_url, {ADMIN_HEADER: token}, interval_s).start()
            logger.info("watching the python-backend stubs of tritonserver pid %d (%s)", pid, http_url)
        stop.wait(interval_s)
    if watchdog is not None:
        watchdog.stop()
