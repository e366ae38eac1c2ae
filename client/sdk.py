"""Python SDK for the talkinghead gateway: submit a job, wait for it with progress, download the signed MP4.

    from client.sdk import GatewayClient

    with GatewayClient("http://127.0.0.1:8080", api_key="thk_...") as gateway:
        job = gateway.submit("face.png", "speech.wav", parameters={"width": 512, "height": 512})
        job = gateway.wait(job["id"], on_progress=lambda j: print(j["status"], j["progress"]))
        gateway.download(job["id"], "out.mp4")  # checks the SHA-256 the gateway announced
        report = gateway.report(job["id"])

Errors from the gateway raise `GatewayError` with the HTTP status, a stable `code` and the gateway's message.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")
API_KEY_ENV = "TALKINGHEAD_API_KEY"
Media = str | os.PathLike | bytes | IO[bytes]


class GatewayError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})")
        self.status, self.code, self.message = status, code, message


class JobFailed(GatewayError):
    """`wait` saw the job end as failed or cancelled."""

    def __init__(self, job: dict) -> None:
        error = job.get("error") or {}
        super().__init__(200, error.get("code") or job["status"],
                         error.get("message") or f"video {job['id']} {job['status']}")
        self.job = job


def _file(name: str, media: Media) -> tuple[str, Any, str]:
    if isinstance(media, bytes):
        return (name, media, "application/octet-stream")
    if isinstance(media, str | os.PathLike):
        path = Path(media)
        return (path.name, open(path, "rb"), "application/octet-stream")  # noqa: SIM115 - closed by submit
    return (getattr(media, "name", name), media, "application/octet-stream")


class GatewayClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        api_key = api_key or os.environ.get(API_KEY_ENV)
        if not api_key:
            raise ValueError(f"give an API key (api_key=... or ${API_KEY_ENV})")
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport,
                                  headers={"Authorization": f"Bearer {api_key}"}, trust_env=False)

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request; a 429 or 503 is retried (up to 3 times) after the Retry-After the gateway sent."""
        for attempt in range(4):
            response = self._http.request(method, url, **kwargs)
            if response.status_code not in (429, 503) or attempt == 3:
                return response
            try:
                delay = float(response.headers.get("retry-after", "1"))
            except ValueError:
                delay = 1.0
            time.sleep(min(10.0, max(0.1, delay)))
            for item in (kwargs.get("files") or {}).values():
                if hasattr(item[1], "seek"):
                    item[1].seek(0)
        return response  # pragma: no cover

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                code, message = error["code"], error["message"]
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", response.text[:500] or response.reason_phrase
            raise GatewayError(response.status_code, code, message)
        return response

    def submit(self, photo: Media, audio: Media | None = None, driving_video: Media | None = None,
               parameters: dict[str, Any] | None = None, webhook_url: str | None = None,
               idempotency_key: str | None = None) -> dict:
        """Upload a job; returns the job (status `queued`, or the earlier job when the key was used before).

        An idempotency key is generated when none is given, so a retry of this very call after a network error
        can never create a second job: pass your own to make retries across processes safe too.
        """
        import json

        files = {"photo": _file("photo", photo)}
        if audio is not None:
            files["audio"] = _file("audio", audio)
        if driving_video is not None:
            files["driving_video"] = _file("driving_video", driving_video)
        data = {}
        if parameters:
            data["parameters"] = json.dumps(parameters)
        if webhook_url:
            data["webhook_url"] = webhook_url
        key = idempotency_key or uuid.uuid4().hex
        try:
            for attempt in range(3):
                try:
                    for item in files.values():
                        if hasattr(item[1], "seek"):
                            item[1].seek(0)
                    response = self._send("POST", "/v1/videos", files=files, data=data,
                                          headers={"Idempotency-Key": key})
                    break
                except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
                    if attempt == 2:
                        raise
                    time.sleep(0.5 * 2 ** attempt)
        finally:
            for name, media in (("photo", photo), ("audio", audio), ("driving_video", driving_video)):
                if isinstance(media, str | os.PathLike) and name in files:
                    files[name][1].close()
        return self._check(response).json()

    def status(self, job_id: str) -> dict:
        return self._check(self._send("GET", f"/v1/videos/{job_id}")).json()

    def wait(self, job_id: str, on_progress: Callable[[dict], None] | None = None, timeout_s: float | None = None,
             poll_s: float = 1.0, max_poll_s: float = 5.0, raise_on_failure: bool = True) -> dict:
        """Poll until the job ends; calls `on_progress(job)` whenever status or progress changed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        seen, delay = None, poll_s
        while True:
            try:
                job = self.status(job_id)
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                job = None  # the gateway restarting: keep waiting
            except GatewayError as exc:
                if exc.status not in (429, 502, 503, 504):
                    raise
                job = None
            if job is not None:
                marker = (job["status"], job["progress"])
                if marker != seen:
                    seen, delay = marker, poll_s
                    if on_progress is not None:
                        on_progress(job)
                else:
                    delay = min(max_poll_s, delay * 1.5)
                if job["status"] in TERMINAL:
                    if raise_on_failure and job["status"] != "succeeded":
                        raise JobFailed(job)
                    return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"video {job_id} did not finish within {timeout_s:g} s")
            time.sleep(delay)

    def download(self, job_id: str, path: str | os.PathLike) -> Path:
        """Stream the MP4 to `path` (via a temporary name) and check its SHA-256 against the gateway's."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        digest = hashlib.sha256()
        with self._http.stream("GET", f"/v1/videos/{job_id}/content") as response:
            if response.status_code >= 400:
                response.read()
                self._check(response)
            expected = response.headers.get("x-content-sha256")
            with open(partial, "wb") as out:
                for block in response.iter_bytes(1 << 20):
                    digest.update(block)
                    out.write(block)
        if expected and digest.hexdigest() != expected:
            partial.unlink(missing_ok=True)
            raise GatewayError(200, "checksum_mismatch", f"the download of {job_id} does not match its SHA-256")
        os.replace(partial, path)
        return path

    def report(self, job_id: str) -> dict:
        return self._check(self._send("GET", f"/v1/videos/{job_id}/report")).json()

    def webhooks(self, job_id: str) -> list[dict]:
        return self._check(self._send("GET", f"/v1/videos/{job_id}/webhooks")).json()["deliveries"]

    def cancel(self, job_id: str) -> dict:
        return self._check(self._send("DELETE", f"/v1/videos/{job_id}")).json()
