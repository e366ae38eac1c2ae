"""Faults at the Triton level, on private servers: python-backend stubs killed mid-request, the CLI and
tritonserver killed with SIGKILL mid-job, a full disk under the output, a missing or broken signing key. No
accepted job is lost or silently failed: each ends with a result or a clear error, promptly, and no partial MP4
that looks complete is left behind."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from client.server import TritonServer
from client.stub_watchdog import ADMIN_HEADER, StubWatchdog
from client.triton_client import Endpoint, ServerUnavailable, TalkingHeadClient
from python_backends.spec import STREAM_KEEPALIVE_S
from python_backends.stub_processes import alive, live_stubs

from .conftest import PREPROCESS_MODELS, assert_clear, assert_healthy, outcome_of
from .corpus import photo_png, speech, speech_wav, wav_bytes

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "client.cli"]
SMALL = {"fps": 5, "width": 128, "height": 128, "chunk_frames": 5}
CLI_SMALL = ["--fps", "5", "--width", "128", "--height", "128", "--chunk-frames", "5"]


@pytest.fixture(scope="module")
def fault_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """All models (the --model-config-name profile's), in a server of their own: these tests kill its processes."""
    from profile_repositories import served_profile

    from client.server import ServerOptions, free_port

    options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                            weights=tmp_path_factory.mktemp("no-weights"),
                            **served_profile(request.config, tmp_path_factory))
    server = TritonServer(options, log_path=tmp_path_factory.mktemp("fault-server") / "tritonserver.log")
    server.start()
    yield server
    server.stop()


def _settled(server: TritonServer, timeout: float = 180.0) -> None:
    """Wait until every model is loaded again (a reload from an earlier fault may still be under way)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert_healthy(server.options)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _kill_stubs(server: TritonServer, model: str) -> list[int]:
    victims = [pid for pid, name in live_stubs(server.process.pid).items() if name == model]
    assert victims, f"no stub of {model} found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    return victims


def _wait_recovered(server: TritonServer, model: str, after: float, timeout: float = 180.0) -> float | None:
    """Seconds the watchdog took to reload `model` after a kill at `after` (time.time()); None if the whole server
    died instead (see _restart_after_abort)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.exited():
            return None
        for event in server.watchdog.events:
            if event.model == model and event.detected_at >= after - 1 and event.recovered:
                return event.detected_at - after + event.reload_s
            assert event.error is None, event.error
        time.sleep(0.2)
    raise AssertionError(f"{model} was not reloaded within {timeout} s")


def _restart_after_abort(server: TritonServer, ledger, case: str) -> None:
    """Triton 2.51's python backend can abort the whole server when a stub is SIGKILLed in the middle of a message
    to it (boost::interprocess::lock_exception; seen in about 1 of 10 runs of the streaming kills). What recovers
    then is the launcher's restart on the same ports (`talkinghead serve`, or the pod's restart): the test does
    that restart and the ledger records the abort as an unexpected outcome, so reports count it."""
    reason = server.crash_reason()
    started = time.monotonic()
    server.restart()
    ledger.record("fault", f"tritonserver_aborted-{case}", "recovered", "server_restarted", time.monotonic() - started,
                  note=reason[:200])
    assert "lock_exception" in reason, f"tritonserver died for another reason: {reason or server.log_tail()}"


def test_a_dead_stub_fails_fast_and_the_watchdog_brings_it_back(fault_server, ledger):
    server = fault_server
    endpoint = Endpoint(server.options.grpc_url, "grpc")
    photo, audio = photo_png(), speech_wav()
    # 1. What Triton 2.51 alone does (watchdog paused): the request fails at once, and the model still says READY.
    server.watchdog.stop()
    before = live_stubs(server.process.pid)
    killed_at = time.time()
    _kill_stubs(server, "face_detector")
    with TalkingHeadClient(endpoint, retry_s=0) as client:
        outcome, message, seconds = outcome_of(lambda: client.preprocess(photo, audio))
        still_ready = client._client.is_model_ready("face_detector")
    ledger.record("fault", "stub_killed-face_detector-no_watchdog", "unavailable", outcome, seconds,
                  lost=outcome not in ("unavailable", "accepted"), triton_reports_ready=still_ready, note=message[:200])
    assert outcome == "unavailable" and "is not healthy" in message, message
    assert seconds < 10
    # 2. The watchdog notices the dead stub and reloads the model; the next request works.
    watchdog = StubWatchdog(server.process.pid, server.options.http_url, {ADMIN_HEADER: server.admin_token})
    watchdog.watch(before)
    events = watchdog.check()
    assert [e.model for e in events] == ["face_detector"] and events[0].recovered, events
    ledger.record("fault", "stub_reload-face_detector", "recovered", "recovered", time.time() - killed_at,
                  reload_s=events[0].reload_s)
    server.watchdog = StubWatchdog(server.process.pid, server.options.http_url,
                                   {ADMIN_HEADER: server.admin_token}).start()
    with TalkingHeadClient(endpoint) as client:
        assert client.preprocess(photo, audio)["verdict"] == "accepted"
        # 3. Killed while a request is in flight, with the watchdog running: the client retries and succeeds.
        results: list = []
        worker = threading.Thread(target=lambda: results.append(outcome_of(lambda: client.preprocess(photo, audio))))
        worker.start()
        time.sleep(0.2)
        killed_at = time.time()
        _kill_stubs(server, "face_detector")
        worker.join(timeout=120)
    outcome, message, seconds = results[0]
    reload_s = _wait_recovered(server, "face_detector", killed_at)
    ledger.record("fault", "stub_killed-face_detector-mid_request", "accepted", outcome, seconds,
                  lost=outcome != "accepted", recovered_after_s=round(reload_s, 2))
    assert outcome == "accepted", message
    assert_healthy(server.options)


def test_a_stub_killed_mid_stream_ends_the_job_promptly(fault_server, ledger):
    """video_generator dies while talking_head streams from it: the job fails within seconds (Triton alone would
    never answer it), the model is reloaded, and the job sent again succeeds."""
    server = fault_server
    _settled(server)
    long_speech = wav_bytes(np.tile(speech(), 3))  # 18 s: four segments, so generation is under way at the kill
    errors: list[Exception] = []
    killed_at = 0.0
    with TalkingHeadClient(Endpoint(server.options.grpc_url, "grpc")) as client:
        started = time.monotonic()
        try:
            for _ in client.generate(photo_png(), long_speech, parameters=SMALL, deadline_s=120):
                if not killed_at:
                    killed_at = time.time()
                    _kill_stubs(server, "video_generator")
        except ServerUnavailable as exc:
            errors.append(exc)
        failed_after = time.time() - killed_at
        aborted = _wait_recovered(server, "video_generator", killed_at) is None
        ledger.record("fault", "stub_killed-video_generator-mid_stream", "unavailable",
                      "unavailable" if errors else "finished", time.monotonic() - started,
                      lost=not errors, failed_after_kill_s=round(failed_after, 2),
                      note=str(errors[0])[:200] if errors else "")
        assert errors, "the job finished although its generator was killed"
        assert failed_after < 15, (failed_after, errors[0])
        if aborted:
            _restart_after_abort(server, ledger, "video_generator-mid_stream")
        else:  # the guard saw the dead stub, or the watchdog's reload was quicker and the generator was not ready
            assert "is being restarted" in str(errors[0]), errors[0]
        _settled(server)
        outcome, message, seconds = outcome_of(lambda: list(client.generate(
            photo_png(), speech_wav(), parameters={**SMALL, "max_duration_s": 2.0}, deadline_s=300)))
    ledger.record("fault", "job_resent_after_stub_reload", "accepted", outcome, seconds)
    assert outcome == "accepted", message


def test_orchestrator_stub_killed_mid_stream_ends_when_keepalives_stop(fault_server, ledger):
    """talking_head itself dies: nothing in the server can answer its stream (a known limit of Triton 2.51's
    python backend), but its keep-alives stop, so the client ends the job after its idle timeout, not a job-length
    one; the watchdog reloads talking_head for the next job."""
    server = fault_server
    _settled(server)
    long_speech = wav_bytes(np.tile(speech(), 3))
    idle = 4 * STREAM_KEEPALIVE_S
    killed_at = 0.0
    with TalkingHeadClient(Endpoint(server.options.grpc_url, "grpc")) as client:
        started = time.monotonic()
        with pytest.raises(ServerUnavailable) as caught:
            for _ in client.generate(photo_png(), long_speech, parameters=SMALL, idle_timeout_s=idle, deadline_s=300):
                if not killed_at:
                    killed_at = time.time()
                    _kill_stubs(server, "talking_head")
        failed_after = time.time() - killed_at
        ledger.record("fault", "stub_killed-talking_head-mid_stream", "unavailable", "unavailable",
                      time.monotonic() - started, failed_after_kill_s=round(failed_after, 2),
                      note=str(caught.value)[:200])
        assert failed_after < idle + 2 * STREAM_KEEPALIVE_S, failed_after
        if _wait_recovered(server, "talking_head", killed_at) is None:
            _restart_after_abort(server, ledger, "talking_head-mid_stream")
        else:
            assert "not even a keep-alive" in str(caught.value)
        _settled(server)
        outcome, message, seconds = outcome_of(lambda: list(client.generate(
            photo_png(), speech_wav(), parameters={**SMALL, "max_duration_s": 2.0}, deadline_s=300)))
    ledger.record("fault", "job_resent_after_orchestrator_reload", "accepted", outcome, seconds)
    assert outcome == "accepted", message


def _cli(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for_chunk(process: subprocess.Popen, timeout: float = 300.0) -> str:
    """Read the CLI's stderr until it reports a chunk (its progress line)."""
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        char = process.stderr.read(1)
        if not char:
            break
        seen += char
        if "chunk " in seen:
            return seen
    raise AssertionError(f"no chunk reported: {seen[-500:]}")


def _leftovers(folder: Path) -> list[str]:
    """What a job left in its output folder, inputs aside. After SIGKILL only the encoder's hidden work file may
    remain, named so that nothing mistakes it for a video."""
    return sorted(p.name for p in folder.iterdir() if p.name not in ("photo.png", "speech.wav"))


def test_cli_killed_mid_job_leaves_no_mp4_and_the_server_cancels(fault_server, tmp_path, ledger):
    server = fault_server
    _settled(server)
    out = tmp_path / "clip.mp4"
    process = _cli(["generate", str(_write(tmp_path, "photo.png", photo_png())),
                    str(_write(tmp_path, "speech.wav", wav_bytes(np.tile(speech(), 3)))), "-o", str(out),
                    *CLI_SMALL, "--url", server.options.grpc_url])
    _wait_for_chunk(process)
    started = time.monotonic()
    process.kill()
    process.wait(timeout=30)
    entries = _leftovers(tmp_path)
    assert "clip.mp4" not in entries and "clip.json" not in entries, entries
    assert all(e.startswith(".") and e.endswith(".partial") for e in entries), entries
    with TalkingHeadClient(Endpoint(server.options.grpc_url, "grpc")) as client:
        outcome, message, seconds = outcome_of(lambda: list(client.generate(
            photo_png(), speech_wav(), parameters={**SMALL, "max_duration_s": 2.0}, deadline_s=300)))
    ledger.record("fault", "cli_killed_mid_job", "no_mp4", "no_mp4", time.monotonic() - started, left=entries,
                  next_job=outcome)
    assert outcome == "accepted", message


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def _tmpfs_prefix(folder: Path, size_kb: int) -> list[str] | None:
    """A prefix that runs a command with `folder` on a tiny tmpfs of its own (a private mount namespace: no
    privileges needed where user namespaces are allowed), listing what is left there at the end; None where
    that is not possible."""
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size={size_kb}k tmpfs {folder}"],
                           capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        return None
    script = (f'mount -t tmpfs -o size={size_kb}k tmpfs "{folder}" || exit 99; "$@"; rc=$?; '
              f'echo "LEFT: $(ls -A "{folder}" | tr "\\n" " ")"; exit $rc')
    return ["unshare", "-rm", "sh", "-c", script, "sh"]


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_full_disk_under_the_output_fails_clearly(how, triton_server, tmp_path, ledger):
    """The output's file system is full: a 16 KiB tmpfs (ENOSPC), or where no mount namespace can be made, a
    16 KiB file-size limit on the CLI (RLIMIT_FSIZE with SIGXFSZ ignored: EFBIG)."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    disk = tmp_path / "disk"
    disk.mkdir()
    prefix = _tmpfs_prefix(disk, 16) if how == "tmpfs" else []
    if prefix is None:
        pytest.skip("no private mount namespace here (unshare -rm refused); the rlimit case covers a full disk")
    out = disk / "clip.mp4"
    args = ["generate", str(_write(inputs, "photo.png", photo_png())), str(_write(inputs, "speech.wav", speech_wav())),
            "-o", str(out), "--fps", "10", "--width", "256", "--height", "256", "--url", triton_server.grpc_url]
    started = time.monotonic()
    if how == "tmpfs":
        result = subprocess.run(prefix + CLI + args, capture_output=True, text=True, timeout=600)
        left = result.stdout.rsplit("LEFT:", 1)[-1].split()
    else:
        result = subprocess.run(CLI + args, capture_output=True, text=True, timeout=600,
                                preexec_fn=_limit_file_size(16 * 1024))
        left = sorted(p.name for p in disk.iterdir())
    seconds = time.monotonic() - started
    message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    ledger.record("fault", f"full_disk-{how}", "clear_error", "clear_error" if result.returncode == 1 else
                  f"exit_{result.returncode}", seconds, lost=result.returncode == 0, left=left, note=message[:200])
    assert result.returncode == 1, result.stdout + result.stderr
    assert message.startswith("error:") and ("No space left" in message or "too large" in message), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert left == [], left  # nothing at all: not the MP4, not its work files


def _signing_env(tmp_path: Path, **paths: Path) -> dict[str, str]:
    env = {**os.environ, "TALKINGHEAD_HOME": str(tmp_path / "home")}
    for name, value in paths.items():
        env[f"TALKINGHEAD_SIGNING_{name.upper()}"] = str(value)
    return env


@pytest.fixture(scope="module")
def two_credentials(tmp_path_factory):
    from client.signing import ensure_development_credential

    root = tmp_path_factory.mktemp("credentials")
    return ensure_development_credential(root / "a"), ensure_development_credential(root / "b")


@pytest.mark.parametrize("problem", ["key_missing", "key_corrupt", "key_of_another_certificate", "cert_missing"])
def test_signing_key_problems_stop_the_job_before_it_starts(problem, two_credentials, triton_server, tmp_path,
                                                           ledger):
    first, second = two_credentials
    key = {"key_missing": tmp_path / "nowhere.key", "key_of_another_certificate": second.private_key}.get(
        problem, first.private_key)
    if problem == "key_corrupt":
        key = _write(tmp_path, "corrupt.key", b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    cert = tmp_path / "nowhere.pem" if problem == "cert_missing" else first.cert_chain
    out = tmp_path / "clip.mp4"
    started = time.monotonic()
    result = subprocess.run(CLI + ["generate", str(_write(tmp_path, "photo.png", photo_png())),
                                   str(_write(tmp_path, "speech.wav", speech_wav())), "-o", str(out), *CLI_SMALL,
                                   "--url", triton_server.grpc_url],
                            capture_output=True, text=True, timeout=300, env=_signing_env(tmp_path, cert=cert, key=key))
    message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    ledger.record("fault", f"signing-{problem}", "clear_error", "clear_error" if result.returncode == 1 else
                  f"exit_{result.returncode}", time.monotonic() - started, lost=result.returncode == 0,
                  note=message[:200])
    assert result.returncode == 1 and message.startswith("error:"), result.stderr
    assert_clear(message)
    assert not out.exists() and "chunk" not in result.stderr  # refused before any generation
    assert "BEGIN" not in result.stderr + result.stdout  # key material never printed


def test_signing_key_gone_at_signing_time_delivers_nothing(two_credentials, tmp_path, ledger):
    """The key disappears after the job started: the delivery step refuses, and no unsigned file is left."""
    from client.compliance import ComplianceOptions, CompliantVideoWriter, JobInputs
    from client.encoding import EncodeOptions
    from client.signing import SigningConfig, SigningError

    first, _ = two_credentials
    key = _write(tmp_path, "signer.key", first.private_key.read_bytes())
    config = SigningConfig(first.cert_chain, key, development=True)
    out = tmp_path / "clip.mp4"
    writer = CompliantVideoWriter(out, 5.0, JobInputs(photo_png(), speech_wav()), {"engine": "test"}, {},
                                  EncodeOptions(), ComplianceOptions(config, audit_log=tmp_path / "audit.log"))
    writer.write(np.zeros((10, 64, 64, 3), np.uint8))
    key.unlink()
    started = time.monotonic()
    with pytest.raises(SigningError) as caught:
        writer.finish()
    ledger.record("fault", "signing-key_removed_mid_job", "clear_error", "clear_error", time.monotonic() - started,
                  note=str(caught.value)[:200])
    assert "signing credential" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())


def test_kill_9_tritonserver_mid_job(fault_server, tmp_path, start_server, ledger):
    """Last in this module: it destroys the fault server. The CLI says the server is unavailable within
    seconds, leaves no MP4, the stubs go with the server, and a new server on the same ports serves again."""
    server = fault_server
    _settled(server)
    stubs = live_stubs(server.process.pid)
    out = tmp_path / "clip.mp4"
    process = _cli(["generate", str(_write(tmp_path, "photo.png", photo_png())),
                    str(_write(tmp_path, "speech.wav", wav_bytes(np.tile(speech(), 3)))), "-o", str(out),
                    *CLI_SMALL, "--url", server.options.grpc_url])
    _wait_for_chunk(process)
    server.watchdog.stop()
    killed = time.monotonic()
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()  # reaped at once, as `talkinghead serve` does: the stubs watch for their parent to go
    _, stderr = process.communicate(timeout=120)
    noticed_s = time.monotonic() - killed
    message = stderr.strip().splitlines()[-1]
    entries = _leftovers(tmp_path)
    # Stubs exit by themselves once their parent is gone, except one busy in a request (seen: video_generator);
    # the launcher's stop() ends the whole process group, so none is left running.
    time.sleep(5)
    lingering = sorted(name for pid, name in stubs.items() if alive(pid))
    server.stop()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in stubs) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = [pid for pid in stubs if alive(pid)]
    ledger.record("fault", "kill_9_tritonserver_mid_job", "unavailable", "unavailable" if process.returncode == 3
                  else f"exit_{process.returncode}", noticed_s, lost=process.returncode == 0, left=entries,
                  stubs=len(stubs), stubs_alive_5s_after=lingering, orphans_after_launcher_stop=len(orphans),
                  note=message[:200])
    assert process.returncode == 3 and message.startswith("unavailable:"), stderr
    assert "Traceback" not in stderr and noticed_s < 30
    assert "clip.mp4" not in entries and all(e.startswith(".") for e in entries), entries
    assert not orphans, f"stubs still running after the server died and was stopped: {orphans}"
    ports = (server.options.http_port, server.options.grpc_port, server.options.metrics_port)
    started = time.monotonic()
    fresh = start_server(models=PREPROCESS_MODELS, ports=ports)
    with TalkingHeadClient(Endpoint(fresh.options.grpc_url, "grpc")) as client:
        outcome, message, _ = outcome_of(lambda: client.preprocess(photo_png(), speech_wav()))
    ledger.record("fault", "new_server_after_kill_9", "accepted", outcome, time.monotonic() - started)
    assert outcome == "accepted", message
