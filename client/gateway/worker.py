"""Workers: claim a queued job, stream it from Triton through the delivery step into storage, record the outcome.

A run holds a lease on its job and renews it every `heartbeat_s` with the progress. If the gateway dies, the lease
runs out and any gateway on the same store re-queues the job (`requeue_expired`), which then runs again from the
start: a Triton stream cannot be resumed mid-job, and with the same seed the result is the same. A run that
cannot reach tritonserver (or loses it mid-stream) goes back to the queue with exponential backoff until
`max_attempts` runs were used; a request the server rejects fails at once with the server's message.

Each run streams in a daemon thread (tritonclient and the encoder block); the asyncio side only claims, beats the
heart and records. Cancellation is seen at the next heartbeat and takes effect at the next streamed chunk, which
also cancels the request on the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..audit import AuditError
from ..compliance import ComplianceOptions, JobInputs
from ..contact_sheet import SegmentThumbnails, render_contact_sheet
from ..delivery import DeliverySession, NoFrames
from ..encoding import EncodeError, EncodeOptions
from ..policy import Policy, policy_of
from ..provenance import SigningFailed
from ..triton_client import Endpoint, RequestRejected, ServerUnavailable, TalkingHeadClient
from .caches import EMBEDDING, OUTPUT, PHOTO_CODES, FingerprintSource, embedding_key, output_key, photo_summary
from .review import HELD, ReviewQueue, review_event
from .settings import GatewaySettings
from .storage import Storage, StorageError, job_key
from .store import CANCELLED, CANCELLED_ERROR, FAILED, SUCCEEDED, Job, JobStore, WebhookEvent
from .views import job_view
from .webhooks import backoff_delay

logger = logging.getLogger(__name__)

STOP_CANCELLED, STOP_LEASE_LOST, STOP_SHUTDOWN = "cancelled", "lease_lost", "shutdown"
STAGING_MAX_AGE_S = 3600.0


class RunControl:
    """Shared by a run's thread and its heartbeat: progress one way, a stop request the other."""

    def __init__(self) -> None:
        self.stop_reason: str | None = None
        self._stop = threading.Event()
        self.frames_done = 0
        self.total_frames: int | None = None

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def progress(self) -> float:
        if not self.total_frames:
            return 0.0
        return min(0.99, self.frames_done / self.total_frames)  # 1.0 only once the video is stored


@dataclass
class Outcome:
    state: str  # succeeded | held | failed | cancelled | retry | abandoned (lease lost / handed back)
    error_code: str | None = None
    message: str | None = None
    qa: dict | None = None
    result: dict | None = None
    extra: dict = field(default_factory=dict)


class _Stopped(Exception):
    pass


def webhook_event(job: Job, state: str, error_code: str | None = None, message: str | None = None,
                  qa: dict | None = None, result: dict | None = None) -> WebhookEvent | None:
    if not job.webhook_url:
        return None
    final = replace(job, state=state, error_code=error_code, error_message=message, qa=qa or job.qa,
                    result=result or job.result, finished_at=time.time(), lease_owner=None)
    if state == SUCCEEDED:
        frames = (result or {}).get("frames")
        final = replace(final, progress=1.0, frames_done=frames, total_frames=frames)
    return WebhookEvent(f"video.{state}", job.webhook_url, {"object": job_view(final)})


def _settle(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def run_in_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future:
    """Like asyncio.to_thread, on a daemon thread: a run stuck waiting for Triton never holds up process exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def target() -> None:
        try:
            value = fn(*args)
        except BaseException as exc:  # handed to the awaiting side
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, value, None)

    threading.Thread(target=target, daemon=True, name="gateway-run").start()
    return future


class WorkerPool:
    def __init__(self, settings: GatewaySettings, store: JobStore, storage: Storage, owner: str,
                 fingerprints: FingerprintSource | None, compliance: Callable[[str], ComplianceOptions],
                 encode: EncodeOptions, content_policy: Callable[[str], Policy] | None = None,
                 review: ReviewQueue | None = None) -> None:
        self.settings, self.store, self.storage, self.owner = settings, store, storage, owner
        # The tenant's content policy (client/policy.py) and the queue its held jobs wait in (review.py).
        self.content_policy = content_policy or (lambda tenant_id: policy_of(settings.policy_profile))
        self.review = review
        self.fingerprints, self.compliance, self.encode = fingerprints, compliance, encode
        self.draining = asyncio.Event()
        self.active: dict[str, RunControl] = {}
        self._tasks: list[asyncio.Task] = []
        self._triton_ok_at = 0.0
        self.staging = settings.staging_path / "jobs"
        self.uploads = settings.staging_path / "uploads"

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        for folder in (self.staging, self.uploads):
            folder.mkdir(parents=True, exist_ok=True)
            self._clean_staging(folder)
        self._tasks = [asyncio.create_task(self._loop(i), name=f"gateway-worker-{i}")
                       for i in range(self.settings.workers)]
        self._tasks.append(asyncio.create_task(self._reaper(), name="gateway-lease-reaper"))

    async def drain(self, timeout_s: float) -> list[str]:
        """Stop claiming; let running jobs finish for up to `timeout_s`; hand the rest back to the queue."""
        self.draining.set()
        if self.active:
            logger.info("draining: waiting up to %.0f s for %d running job(s)", timeout_s, len(self.active))
        deadline = time.monotonic() + timeout_s
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        handed_back = []
        for job_id, control in list(self.active.items()):
            control.stop(STOP_SHUTDOWN)
            if await asyncio.to_thread(self.store.release_job, job_id, self.owner):
                handed_back.append(job_id)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return handed_back

    @staticmethod
    def _clean_staging(folder: Path) -> None:
        """Partial files of runs and uploads that died with an earlier process (their jobs run again from the
        start; an upload cut off never got its 202)."""
        now = time.time()
        for entry in folder.iterdir():
            try:
                if now - entry.stat().st_mtime > STAGING_MAX_AGE_S:
                    shutil.rmtree(entry, ignore_errors=True)
            except FileNotFoundError:
                pass

    async def _reaper(self) -> None:
        interval = max(0.5, self.settings.lease_s / 3)
        while True:
            try:
                changed = await asyncio.to_thread(self.store.requeue_expired, self.settings.max_attempts,
                                                  webhook_event)
                for job_id, state in changed.items():
                    logger.warning("job %s: lease expired, now %s", job_id, state)
            except Exception:
                logger.exception("lease reaper")
            await asyncio.sleep(interval)

    async def _loop(self, index: int) -> None:
        while not self.draining.is_set():
            try:
                job = None
                if await self._triton_ready():
                    job = await asyncio.to_thread(self.store.claim_job, self.owner, self.settings.lease_s)
                if job is None:
                    try:
                        await asyncio.wait_for(self.draining.wait(), self.settings.poll_s)
                    except asyncio.TimeoutError:
                        pass
                    continue
                await self.run_job(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("worker %d", index)
                await asyncio.sleep(self.settings.poll_s)

    async def _triton_ready(self) -> bool:
        """Claim nothing while tritonserver is down: a job would only burn one of its attempts."""
        if time.monotonic() - self._triton_ok_at < 5.0:
            return True

        def probe() -> bool:
            with TalkingHeadClient(Endpoint(self.settings.triton_url, "grpc"), timeout_s=5.0) as client:
                return client.is_ready()

        try:
            ready = await asyncio.to_thread(probe)
        except Exception:
            ready = False
        if ready:
            self._triton_ok_at = time.monotonic()
        return ready

    # -- one job ----------------------------------------------------------------------------------------------

    async def run_job(self, job: Job) -> Outcome:
        control = RunControl()
        self.active[job.id] = control
        heart = asyncio.create_task(self._heartbeat(job, control))
        try:
            try:
                outcome = await run_in_thread(self._execute, job, control)
            except Exception as exc:  # a bug must not leave the job running forever: retry it, then fail it
                logger.exception("job %s crashed", job.id)
                outcome = Outcome("retry", message=f"internal error in the gateway: {type(exc).__name__}: {exc}")
        finally:
            heart.cancel()
            self.active.pop(job.id, None)
        await asyncio.to_thread(self._record, job, outcome)
        return outcome

    async def _heartbeat(self, job: Job, control: RunControl) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                beat = await asyncio.to_thread(self.store.heartbeat, job.id, self.owner, self.settings.lease_s,
                                               control.progress, control.frames_done, control.total_frames)
            except Exception:
                logger.exception("heartbeat of job %s", job.id)
                continue
            if not beat.held:
                control.stop(STOP_LEASE_LOST)
            elif beat.cancel_requested:
                control.stop(STOP_CANCELLED)

    def _record(self, job: Job, outcome: Outcome) -> None:
        if outcome.state == "abandoned":
            return
        if outcome.state == HELD:
            reasons = list(((outcome.qa or {}).get("content_policy") or {}).get("reasons") or ["held"])
            done = self.review is not None and self.review.hold(
                job.id, self.owner, qa=outcome.qa, result=outcome.result, reasons=reasons,
                frames=(outcome.result or {}).get("frames"),
                webhook_for=lambda held: review_event(held, "video.held"))
            if not done:
                logger.warning("job %s was held for review but its lease was gone", job.id)
            return
        if outcome.state == "retry":
            self._triton_ok_at = 0.0  # probe readiness again before the next claim
            delay = backoff_delay(job.attempts, self.settings.retry_base_s, self.settings.retry_max_s) + \
                self.settings.retry_base_s / 2
            event = webhook_event(job, FAILED, "server_unavailable", f"gave up after {job.attempts} runs: "
                                  f"{outcome.message}")
            state = self.store.retry_job(job.id, self.owner, outcome.message or "unknown error", delay,
                                         self.settings.max_attempts, webhook=event)
            logger.warning("job %s run %d: %s -> %s", job.id, job.attempts, outcome.message, state)
            return
        event = webhook_event(job, outcome.state, outcome.error_code, outcome.message, outcome.qa, outcome.result)
        done = self.store.finish_job(job.id, self.owner, outcome.state, error_code=outcome.error_code,
                                     error_message=outcome.message, qa=outcome.qa, result=outcome.result,
                                     webhook=event, frames=(outcome.result or {}).get("frames"))
        if not done:
            logger.warning("job %s finished as %s but its lease was gone; the other run's result stands",
                           job.id, outcome.state)

    def _execute(self, job: Job, control: RunControl) -> Outcome:
        workdir = self.staging / job.id
        try:
            return self._generate(job, control, workdir)
        except _Stopped:
            if control.stop_reason == STOP_CANCELLED:
                return Outcome(CANCELLED, *CANCELLED_ERROR)
            return Outcome("abandoned")
        except RequestRejected as exc:
            self._remember_rejection(job, exc)
            return Outcome(FAILED, exc.code or "rejected", str(exc))
        except (EncodeError, SigningFailed, AuditError) as exc:
            return Outcome(FAILED, "delivery_failed", f"the video could not be delivered: {exc}")
        except (ServerUnavailable, StorageError, OSError) as exc:
            return Outcome("retry", message=f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            # tritonclient's InferenceServerException for INTERNAL and friends: maybe transient, retried a few times.
            from tritonclient.utils import InferenceServerException

            if isinstance(exc, InferenceServerException):
                return Outcome("retry", message=f"tritonserver: {exc.message() or exc}")
            raise
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            self.store.db.release_thread()  # this run's thread ends here

    def _remember_rejection(self, job: Job, exc: RequestRejected) -> None:
        latest = self.fingerprints.latest if self.fingerprints else None
        if exc.code in PHOTO_CODES and latest is not None and self.settings.caches.embeddings:
            key = embedding_key(job.tenant_id, job.inputs["photo"]["sha256"], latest)
            self.store.cache_put(EMBEDDING, key, job.tenant_id,
                                 {"status": "rejected", "code": exc.code, "message": str(exc)})

    def _generate(self, job: Job, control: RunControl, workdir: Path) -> Outcome:
        settings = self.settings
        data = {name: self.storage.get_bytes(item["key"]) for name, item in job.inputs.items()}
        photo, audio, video = data["photo"], data.get("audio"), data.get("driving_video")
        endpoint = Endpoint(settings.triton_url, "grpc")
        with TalkingHeadClient(endpoint) as client:
            fingerprint = None
            if self.fingerprints is not None:
                try:
                    # Never wait for a listing in progress (the first one after start takes seconds): this
                    # run then simply skips the caches.
                    fingerprint = self.fingerprints.current(client._client, wait=False)
                except Exception as exc:  # Triton went away between the readiness probe and now
                    raise ServerUnavailable(f"cannot read Triton's model index: {exc}") from None
            cache_key = None
            if fingerprint is not None and settings.caches.outputs:
                cache_key = output_key(job.tenant_id, job.inputs, job.parameters, fingerprint)
                hit = self._from_cache(job, cache_key)
                if hit is not None:
                    return hit
            if control.stopped:
                raise _Stopped()
            workdir.mkdir(parents=True, exist_ok=True)
            out = workdir / "video.mp4"
            inputs = JobInputs(photo, audio, video, dict(job.parameters), job_id=job.id)
            thumbnails = SegmentThumbnails()  # the reviewer's contact sheet, should the job be held

            def check() -> None:
                if control.stopped:
                    raise _Stopped()

            def progress(chunk) -> None:
                thumbnails.add(chunk.info.get("segment", 0), chunk.start_frame, chunk.frames)
                control.frames_done = chunk.start_frame + len(chunk.frames)
                control.total_frames = chunk.total_frames

            session = DeliverySession(out, inputs, self.encode, self.compliance(job.tenant_id),
                                      self.content_policy(job.tenant_id), t0=time.perf_counter(),
                                      on_job_report=lambda report: self._remember_photo(job, report, fingerprint),
                                      on_chunk=progress)
            stream = client.generate(photo, audio, video, session.server_parameters,
                                     idle_timeout_s=settings.stream_idle_timeout_s,
                                     deadline_s=settings.job_timeout_s)
            try:
                delivery = session.deliver(stream, check)
            except NoFrames as exc:
                raise ServerUnavailable(str(exc)) from None
            report, qa_report, decision = session.job_report, session.qa_report, session.decision
        if not decision.held:
            return self._store_output(job, out, delivery, report, qa_report, fingerprint, cache_key)
        # Only delivered videos are served again from the cache.
        outcome = self._store_output(job, out, delivery, report, qa_report, fingerprint, None)
        if qa_report is not None and qa_report.get("segments"):
            sheet_key = job_key(job.tenant_id, job.id, "contact_sheet.png")
            self.storage.put_file(sheet_key, render_contact_sheet(qa_report, thumbnails, workdir / "sheet.png"),
                                  "image/png")
            outcome.result["contact_sheet_key"] = sheet_key
        return replace(outcome, state=HELD)

    def _remember_photo(self, job: Job, report: dict, fingerprint: Any) -> None:
        summary = photo_summary(report)
        self.store.set_photo(job.id, summary)
        if fingerprint is not None and self.settings.caches.embeddings:
            key = embedding_key(job.tenant_id, job.inputs["photo"]["sha256"], fingerprint)
            self.store.cache_put(EMBEDDING, key, job.tenant_id, summary)

    def _store_output(self, job: Job, out: Path, delivery: dict, report: dict, qa_report: dict | None,
                      fingerprint: Any, cache_key: str | None) -> Outcome:
        video_key = job_key(job.tenant_id, job.id, "video.mp4")
        report_key = job_key(job.tenant_id, job.id, "report.json")
        delivery = {key: value for key, value in delivery.items() if key != "video"}
        delivery["encode"] = {key: value for key, value in delivery["encode"].items() if key != "path"}
        self.storage.put_bytes(report_key, json.dumps(
            {"job_id": job.id, "qa_report": qa_report, "job_report": report, "delivery": delivery}, indent=2
        ).encode(), "application/json")
        self.storage.put_file(video_key, out, "video/mp4")
        encoded = delivery["encode"]
        result = {
            "video_key": video_key, "report_key": report_key, "sha256": delivery["sha256"],
            "bytes": out.stat().st_size, "content_type": "video/mp4", "frames": encoded["frames"],
            "fps": encoded["fps"], "codec": encoded["codec"], "signed": delivery["signed"], "cache": "miss",
            "cached_from": None, "audit": delivery["audit"],
        }
        qa = delivery["qa_verdict"]
        if cache_key is not None:
            reported = dict(report.get("models") or {})
            problems = fingerprint.mismatches(reported)
            if problems:
                logger.warning("job %s: not cached, the server's weights differ from what this gateway sees "
                               "(set caches.weights_root to tritonserver's --weights folder): %s",
                               job.id, "; ".join(problems))
            else:
                self.store.cache_put(OUTPUT, cache_key, job.tenant_id, {"job_id": job.id, "result": result, "qa": qa})
        return Outcome(SUCCEEDED, qa=qa, result=result)

    def _from_cache(self, job: Job, key: str) -> Outcome | None:
        entry = self.store.cache_get(OUTPUT, key, job.tenant_id)
        if entry is None:
            return None
        # Only delivered videos are cached; one delivered under another content profile (the tenant's changed
        # since) is made again, so that its checks and label follow the profile now in force.
        cached_profile = ((entry.get("qa") or {}).get("content_policy") or {}).get("profile")
        if cached_profile != self.content_policy(job.tenant_id).profile.value:
            return None
        result = dict(entry["result"])
        if self.storage.size(result["video_key"]) != result["bytes"]:
            self.store.cache_delete(OUTPUT, key)  # the cached object is gone or changed: generate again
            return None
        result.update(cache="hit", cached_from=entry["job_id"])
        try:
            # The signed file names the job that made it; the audit log records that this job got a copy.
            result["audit"] = _audit_redelivery(self.compliance(job.tenant_id), job, entry["job_id"], result)
        except AuditError as exc:
            return Outcome(FAILED, "delivery_failed", f"the cached video could not be delivered: {exc}")
        return Outcome(SUCCEEDED, qa=entry.get("qa"), result=result)


def _audit_redelivery(compliance: ComplianceOptions, job: Job, source_job: str, result: dict) -> dict:
    auditor = compliance.auditor()
    record = auditor.append({
        "event": "video.redelivered_from_cache", "job_id": job.id, "tenant": compliance.tenant,
        "source_job_id": source_job,
        "inputs": {name + "_sha256": item["sha256"] for name, item in job.inputs.items()},
        "parameters": job.parameters, "output": {"sha256": result["sha256"], "bytes": result["bytes"]},
    })
    return {"log": auditor.location, "seq": record["seq"], "hash": record["hash"]}


def default_owner(instance_id: str) -> str:
    return f"{instance_id or os.uname().nodename}:{os.getpid()}:{os.urandom(3).hex()}"
