"""Security on the Triton and CLI side: path traversal in every name a request or a config carries, the model
repository API (explicit model control, for the stub watchdog) locked behind a per-server token, inputs that are
devices rather than files, and secrets that never reach a log, an output or an error message."""

from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from client.stub_watchdog import ADMIN_HEADER
from python_backends.errors import ConfigError
from python_backends.weights import official_path

from .conftest import PREPROCESS_MODELS, assert_healthy, outcome_of
from .corpus import photo_png, speech_wav

CLI = [sys.executable, "-m", "client.cli"]

TRAVERSAL_NAMES = ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "face_detector/../preprocess", "/etc/passwd",
                   "....//....//etc/passwd", "face_detector/../../model_repository/face_detector")


@pytest.mark.integration
@pytest.mark.parametrize("name", TRAVERSAL_NAMES)
def test_model_names_cannot_walk_out_of_the_repositories(name, triton_server, ledger):
    outcomes = []
    for module, url in ((grpc, triton_server.grpc_url), (thttp, triton_server.http_url)):
        client = module.InferenceServerClient(url)
        started = time.monotonic()
        try:
            client.get_model_config(name)
            outcomes.append("found")
        except InferenceServerException as exc:
            outcomes.append("refused")
            assert "Traceback" not in (exc.message() or "")
        finally:
            client.close()
        ledger.record("security", f"model_name-{module.__name__.split('.')[-1]}-{name}", "refused", outcomes[-1],
                      time.monotonic() - started)
    assert outcomes == ["refused", "refused"]
    # The raw HTTP path, not normalised by a client library.
    connection = http.client.HTTPConnection(*triton_server.http_url.split(":"), timeout=30)
    connection.request("GET", f"/v2/models/{name}/config")
    status = connection.getresponse().status
    connection.close()
    ledger.record("security", f"model_name-raw_http-{name}", "refused", "refused" if status >= 400 else "found", 0.0)
    assert status >= 400
    assert_healthy(triton_server)


_EVIL_MODEL = '''
import pathlib
class TritonPythonModel:
    def initialize(self, args):
        pathlib.Path({marker!r}).write_text("code from a request ran in the server")
    def execute(self, requests):
        return []
'''
_EVIL_CONFIG = {"name": "evil", "backend": "python", "max_batch_size": 0,
                "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],
                "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}]}


@pytest.mark.integration
def test_the_repository_api_answers_only_the_watchdog(start_server, tmp_path, ledger):
    """Explicit model control lets anyone who reaches the port load models, and `load` with uploaded files runs
    their code. The launcher locks that API behind a token only the watchdog holds, never written to the log."""
    server = start_server(models=PREPROCESS_MODELS[:1])
    marker = tmp_path / "pwned"
    files = {"file:1/model.py": _EVIL_MODEL.format(marker=str(marker)).encode()}
    evil_dir = tmp_path / "evil"
    (evil_dir / "1").mkdir(parents=True)
    (evil_dir / "1" / "model.py").write_bytes(files["file:1/model.py"])
    (evil_dir / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 0\n')
    relative = os.path.relpath(evil_dir, Path(__file__).resolve().parents[2] / "model_repository")
    attempts = []
    for module, url in ((thttp, server.options.http_url), (grpc, server.options.grpc_url)):
        protocol = module.__name__.split(".")[-1]
        client = module.InferenceServerClient(url)
        calls = {
            "index": lambda c=client: c.get_model_repository_index(),
            "unload": lambda c=client: c.unload_model("face_detector"),
            "load_uploaded_code": lambda c=client: c.load_model("evil", config=json.dumps(_EVIL_CONFIG), files=files),
            "load_outside_repository": lambda c=client: c.load_model(relative),
        }
        for what, call in calls.items():
            try:
                call()
                outcome = "allowed"
            except InferenceServerException as exc:
                outcome = "refused"
                attempts.append(exc.message())
            ledger.record("security", f"repository_api-{protocol}-no_token-{what}", "refused", outcome, 0.0)
            assert outcome == "refused", f"{protocol} {what} was allowed without the token"
        client.close()
    # With the token the API works, but a name outside the repositories is still not a model.
    admin = thttp.InferenceServerClient(server.options.http_url)
    headers = {ADMIN_HEADER: server.admin_token}
    assert [m["name"] for m in admin.get_model_repository_index(headers=headers)]
    with pytest.raises(InferenceServerException):
        admin.load_model(relative, headers=headers)
    ledger.record("security", "repository_api-token-load_outside_repository", "refused", "refused", 0.0)
    admin.close()
    time.sleep(1)
    assert not marker.exists(), "model code sent by a client ran in the server"
    assert server.admin_token not in server.log_path.read_text(errors="replace")
    assert_healthy(server.options)


def test_weights_names_cannot_leave_the_weights_root(tmp_path, ledger):
    (tmp_path / "face_detector").mkdir()
    (tmp_path / "face_detector" / "ok.pth").write_bytes(b"x")
    assert official_path("face_detector", "ok.pth", tmp_path) == tmp_path / "face_detector" / "ok.pth"
    for name in ("../../etc/passwd", "/etc/passwd", "sub/../../other_model/file.pth"):
        with pytest.raises(ConfigError, match="inside <weights root>"):
            official_path("face_detector", name, tmp_path)
        ledger.record("security", f"weights_name-{name}", "refused", "refused", 0.0)


@pytest.mark.integration
def test_request_parameters_cannot_name_files(grpc_client, triton_server, ledger):
    for name, parameters in (("engine", {"engine": "../../../etc/passwd"}),
                             ("engine_absolute", {"engine": "/etc/passwd"}),
                             ("unknown_path_parameter", {"weights": "/etc/passwd"})):
        outcome, message, seconds = outcome_of(lambda p=parameters: list(grpc_client.generate(
            photo_png(), speech_wav(), parameters={**p, "fps": 5, "width": 128, "height": 128}, deadline_s=120)))
        ledger.record("security", f"parameter-{name}", "bad_parameter", outcome, seconds)
        assert outcome == "bad_parameter", message
    assert_healthy(triton_server)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_cli_refuses_devices_as_inputs(device, tmp_path, ledger):
    """`validate /dev/zero` would read until memory ran out (the CLI read whole files without looking first)."""
    started = time.monotonic()
    result = subprocess.run(CLI + ["validate", device, str(tmp_path / "missing.wav"), "--url", "127.0.0.1:1"],
                            capture_output=True, text=True, timeout=60)
    ledger.record("security", f"cli_input-{device}", "refused", "refused" if result.returncode == 1 else
                  f"exit_{result.returncode}", time.monotonic() - started)
    assert result.returncode == 1 and "not a regular file" in result.stderr, result.stderr


def _session_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session server's log (tests/conftest.py writes it under the session's base temp folder)."""
    logs = sorted(tmp_path_factory.getbasetemp().glob("triton*/tritonserver.log"))
    assert logs, "no session tritonserver log found"
    return logs[0]


@pytest.mark.integration
def test_secrets_never_reach_logs_outputs_or_errors(triton_server, grpc_client, tmp_path, tmp_path_factory, ledger):
    from client.signing import ensure_development_credential

    credential = ensure_development_credential(tmp_path / "credential")
    key_pem = credential.private_key.read_bytes()
    key_line = key_pem.splitlines()[1]  # the first base64 line of the key, as it would appear if leaked
    api_key = "sk-live-" + secrets.token_hex(16)
    env = {**os.environ, "TALKINGHEAD_HOME": str(tmp_path / "home"), "TALKINGHEAD_SIGNING_CERT":
           str(credential.cert_chain), "TALKINGHEAD_SIGNING_KEY": str(credential.private_key),
           "TALKINGHEAD_API_KEY": api_key, "OPENAI_API_KEY": api_key}
    out = tmp_path / "clip.mp4"
    photo, audio = tmp_path / "photo.png", tmp_path / "speech.wav"
    photo.write_bytes(photo_png())
    audio.write_bytes(speech_wav())
    result = subprocess.run(CLI + ["generate", str(photo), str(audio), "-o", str(out), "--fps", "5", "--width", "128",
                                   "--height", "128", "--max-duration", "2", "--url", triton_server.grpc_url],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    # A secret sent where a parameter goes is refused by name, and its value is not echoed.
    outcome, message, _ = outcome_of(lambda: list(grpc_client.generate(
        photo_png(), speech_wav(), parameters={"api_key": api_key}, deadline_s=60)))
    assert outcome == "bad_parameter" and api_key not in message, message
    time.sleep(1)  # let the server flush its log
    places = {
        "cli_output": (result.stdout + result.stderr).encode(),
        "tritonserver_log": _session_log(tmp_path_factory).read_bytes(),
        "sidecar_json": out.with_suffix(".json").read_bytes(),
        "qa_json": out.with_suffix(".qa.json").read_bytes(),
        "audit_log": (tmp_path / "home" / "audit.log").read_bytes(),
        "mp4": out.read_bytes(),
        "error_message": message.encode(),
    }
    secrets_ = {"private_key_pem": key_line, "private_key_header": b"PRIVATE KEY", "api_key": api_key.encode(),
                "api_key_base64": base64.b64encode(api_key.encode())}
    leaks = [(place, secret) for place, data in places.items() for secret, value in secrets_.items() if value in data]
    for place in places:
        ledger.record("security", f"secrets-{place}", "clean", "leak" if any(p == place for p, _ in leaks) else "clean",
                      0.0)
    assert not leaks, leaks
