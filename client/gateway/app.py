"""The HTTP API (FastAPI on uvicorn; OpenAPI at /openapi.json, docs at /docs) and the gateway it fronts.

    POST   /v1/videos                multipart: photo + audio and/or driving_video files, parameters (JSON text),
                                     webhook_url; header Idempotency-Key -> 202 with the job
    GET    /v1/videos/{id}           status, progress, QA summary, error
    GET    /v1/videos/{id}/content   the signed MP4 (409 until it is ready)
    GET    /v1/videos/{id}/report    QA report, pre-processing report, delivery (signature, audit) as JSON
    GET    /v1/videos/{id}/webhooks  webhook deliveries and every attempt
    DELETE /v1/videos/{id}           cancel
    GET    /healthz, /readyz

The gateway never fetches media from URLs a user sends: media arrive in the request body only. A job is accepted
(202) only once its inputs are stored durably and its row is committed, so a crash after the 202 loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from starlette.concurrency import iterate_in_threadpool

from python_backends import __version__
from python_backends.contract import PUBLIC_PARAMETERS

from ..compliance import ComplianceOptions
from ..encoding import EncodeOptions
from ..policy import Policy
from ..triton_client import Endpoint, TalkingHeadClient
from .audit_store import DatabaseAuditLog
from .auth_limit import FailedAuthLimiter, key_subject
from .caches import EMBEDDING, FingerprintSource, ParameterError, canonical_parameters, digest, embedding_key
from .credentials import load_credentials
from .retention import EraseRefused, Retention
from .review import HELD, ReviewQueue
from .review_api import add_review_routes
from .settings import GatewaySettings
from .storage import Storage, job_key, open_storage
from .store import CANCELLED, QUEUED, RUNNING, SUCCEEDED, Job, JobStore, LimitReached, Tenant, new_id
from .tenant_settings import TenantSettingsStore
from .tenants import AuthError, QuotaExceeded, Tenants
from .uploads import FILE_FIELDS, UploadInvalid, UploadTooLarge, megabytes, parse_upload
from .views import job_view, without_paths
from .webhooks import TargetGuard, WebhookDispatcher, WebhookSender, WebhookTargetRefused
from .worker import WorkerPool, default_owner, webhook_event

logger = logging.getLogger("talkinghead.gateway")

UPLOAD_SCHEMA = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": ["photo"],
        "properties": {
            "photo": {"type": "string", "format": "binary", "description": "JPEG, PNG or WebP with one face"},
            "audio": {"type": "string", "format": "binary", "description": "speech in any format ffmpeg reads"},
            "driving_video": {"type": "string", "format": "binary", "description": "a video whose face drives"},
            "parameters": {"type": "string", "description": 'JSON object, e.g. {"width": 512, "height": 512, '
                                                            '"fps": 25, "seed": 7}; keys: '
                                                            + ", ".join(PUBLIC_PARAMETERS)},
            "webhook_url": {"type": "string", "format": "uri",
                            "description": "called (signed) when the job succeeds, fails or is cancelled"},
        },
    }}},
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


class Gateway:
    """Everything behind the routes: store, storage, tenants, webhooks, workers."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.credentials = load_credentials(settings)  # strict / standard: refuses to start without them
        self.store = JobStore(settings.database)
        # One audit chain for every replica sharing the database (audit_store.py), or the file of one gateway.
        self.audit = DatabaseAuditLog(self.store.db) if settings.delivery.audit_store == "database" else None
        self.storage: Storage = open_storage(settings)
        self.master = self.credentials.master
        self.tenants = Tenants(self.store, self.master, settings.tenant_defaults)
        self.tenant_settings = TenantSettingsStore(self.store.db)
        self.review = ReviewQueue(self.store, self.auditor)
        self.auth_limiter = FailedAuthLimiter(self.store, settings.limits.failed_auth_burst,
                                              settings.limits.failed_auth_per_minute)
        self.guard = TargetGuard(settings.webhooks)
        self.owner = default_owner(settings.instance_id)
        caches = settings.caches
        self.fingerprints = FingerprintSource(caches.weights_root, caches.fingerprint_refresh_s) \
            if (caches.outputs or caches.embeddings) else None
        self.retention = Retention(self.store, self.storage, settings, self.tenant_settings, self.auditor,
                                   self.fingerprints)
        self.workers: WorkerPool | None = None
        self.dispatcher: WebhookDispatcher | None = None
        self.draining = False
        self._stop = asyncio.Event()
        self._background: list[asyncio.Task] = []

    # -- lifecycle --------------------------------------------------------------------------------------------

    def _compliance_factory(self):
        delivery = self.settings.delivery
        encode = EncodeOptions(codec=delivery.codec, crf=delivery.crf, preset=delivery.preset)

        def for_tenant(tenant_id: str) -> ComplianceOptions:
            label = delivery.visible_label or self.content_policy(tenant_id).visible_label
            return ComplianceOptions(self.credentials.signing, omit_photo_ingredient=delivery.omit_photo_ingredient,
                                     visible_label=label, audit_log=self.settings.audit_path,
                                     audit_store=self.audit, tenant=tenant_id,
                                     policy_profile=self.credentials.policy.profile.value)

        return for_tenant, encode

    def auditor(self, tenant_id: str):
        """The audit log that delivery records go to (for review decisions and erasures)."""
        return self._compliance_factory()[0](tenant_id).auditor()

    async def _retention_sweeper(self) -> None:
        while True:
            try:
                erased = await asyncio.to_thread(self.retention.sweep)
                for tenant_id, what in erased.items():
                    logger.info("retention: tenant %s: erased %s", tenant_id, what)
            except Exception:
                logger.exception("retention sweep")
            await asyncio.sleep(self.settings.retention.sweep_s)

    def content_policy(self, tenant_id: str) -> Policy:
        """The tenant's content rules: its own policy profile (tenant_settings.py), else the deployment's."""
        return self.tenant_settings.policy(tenant_id, self.settings.policy_profile)

    async def start(self) -> None:
        compliance, encode = await asyncio.to_thread(self._compliance_factory)
        self.workers = WorkerPool(self.settings, self.store, self.storage, self.owner, self.fingerprints,
                                  compliance, encode, content_policy=self.content_policy, review=self.review)
        self.workers.start()
        sender = WebhookSender(self.settings.webhooks, self.guard)
        self.dispatcher = WebhookDispatcher(self.store, sender, self.settings.webhooks, self._webhook_secret,
                                            self.owner)
        self._background.append(asyncio.create_task(self.dispatcher.run(self._stop)))
        self._background.append(asyncio.create_task(self._retention_sweeper()))
        if self.fingerprints is not None:  # list the weights now, not on the first job
            self._background.append(asyncio.create_task(asyncio.to_thread(self.fingerprints.weights)))
        logger.info("gateway %s ready: triton %s, store %s, storage %s", self.owner, self.settings.triton_url,
                    self.store.dialect, self.settings.storage.kind)

    async def stop(self) -> None:
        self.draining = True
        if self.workers is not None:
            handed_back = await self.workers.drain(self.settings.drain_timeout_s)
            if handed_back:
                logger.warning("shutdown: handed %d running job(s) back to the queue: %s", len(handed_back),
                               ", ".join(handed_back))
        self._stop.set()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.dispatcher is not None:
            await self.dispatcher.sender.close()
        self.store.close()

    def _webhook_secret(self, tenant_id: str) -> str:
        tenant = self.store.tenant(tenant_id)
        return self.master.webhook_secret(tenant)

    # -- submit -----------------------------------------------------------------------------------------------

    async def submit(self, tenant: Tenant, request: Request, idempotency_key: str | None) -> tuple[Job, bool]:
        settings = self.settings
        if self.draining:
            raise ApiError(503, "draining", "the gateway is shutting down; retry in a few seconds",
                           {"Retry-After": "5"})
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
            raise ApiError(422, "bad_idempotency_key", "Idempotency-Key must be 1 to 255 characters")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.limits.max_request_bytes:
            raise ApiError(413, "upload_too_large",
                           f"the request body is {megabytes(int(length))}; the limit is "
                           f"{megabytes(settings.limits.max_upload_bytes)} per file "
                           f"({megabytes(settings.limits.max_request_bytes)} per request)")
        existing = None
        if idempotency_key is not None:
            existing = await asyncio.to_thread(self.store.job_by_idempotency_key, tenant.id, idempotency_key)
        if existing is None:
            try:
                await asyncio.to_thread(self.tenants.check_submit, tenant, settings.limits.max_queued_jobs)
            except QuotaExceeded as exc:
                raise ApiError(429, exc.code, str(exc), {"Retry-After": str(int(exc.retry_after_s) + 1)}) from None
        folder = settings.staging_path / "uploads" / uuid.uuid4().hex
        try:
            try:
                upload = await parse_upload(request.headers.get("content-type", ""), request.stream(), folder,
                                            settings.limits)
            except UploadTooLarge as exc:
                raise ApiError(413, "upload_too_large", str(exc)) from None
            except UploadInvalid as exc:
                raise ApiError(422, "bad_form", str(exc)) from None
            return await self._accept(tenant, upload, idempotency_key, existing)
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, True)

    async def _accept(self, tenant: Tenant, upload, idempotency_key: str | None,
                      existing: Job | None) -> tuple[Job, bool]:
        files, fields = upload.files, upload.fields
        if "photo" not in files:
            raise ApiError(422, "photo_missing", "send the photo as the file field `photo`")
        if "audio" not in files and "driving_video" not in files:
            raise ApiError(422, "driver_missing", "send speech as the file field `audio`, a driving video as "
                                                  "`driving_video`, or both")
        for name, item in files.items():
            if item.bytes == 0:
                raise ApiError(422, f"{name}_empty", f"{name} is empty (0 bytes)")
        parameters = _parse_parameters(fields.get("parameters"))
        webhook_url = (fields.get("webhook_url") or "").strip() or None
        if webhook_url is not None:
            try:
                await self.guard.check_url(webhook_url)
            except WebhookTargetRefused as exc:
                raise ApiError(422, "webhook_url_refused", str(exc)) from None
        inputs_hash = {name: item.sha256 for name, item in sorted(files.items())}
        request_hash = digest(inputs_hash, parameters, webhook_url)
        if existing is not None:
            return self._replay(existing, request_hash), False
        photo = await asyncio.to_thread(self._known_photo, tenant, files["photo"].sha256)
        now = time.time()
        job_id = new_id("vid")
        inputs = {}
        for name in FILE_FIELDS:
            if name in files:
                item = files[name]
                key = job_key(tenant.id, job_id, name)
                await asyncio.to_thread(self.storage.put_file, key, item.path, item.content_type)
                inputs[name] = {"key": key, "sha256": item.sha256, "bytes": item.bytes, "filename": item.filename}
        job = Job(id=job_id, tenant_id=tenant.id, state=QUEUED, parameters=parameters, inputs=inputs,
                  request_hash=request_hash, idempotency_key=idempotency_key, webhook_url=webhook_url,
                  next_attempt_at=now, photo=photo, created_at=now, updated_at=now)
        limits = self.tenants.submit_limits(tenant, self.settings.limits.max_queued_jobs)
        try:
            # The quota and queue cap again, bindingly: checked before the upload was read, they may have been
            # used up by concurrent submits since.
            stored, created = await asyncio.to_thread(self.store.create_job, job, limits)
        except LimitReached as reached:
            await asyncio.to_thread(self.storage.delete_prefix, f"tenants/{tenant.id}/jobs/{job_id}")
            exc = self.tenants.refusal(tenant, reached)
            raise ApiError(429, exc.code, str(exc), {"Retry-After": str(int(exc.retry_after_s) + 1)}) from None
        if not created:  # the same key won a race with this request: ours is not needed
            await asyncio.to_thread(self.storage.delete_prefix, f"tenants/{tenant.id}/jobs/{job_id}")
            return self._replay(stored, request_hash), False
        logger.info("job %s accepted for tenant %s", job_id, tenant.name)
        return stored, True

    @staticmethod
    def _replay(existing: Job, request_hash: str) -> Job:
        if existing.request_hash != request_hash:
            raise ApiError(422, "idempotency_key_reused",
                           f"this Idempotency-Key was already used for job {existing.id} with different files, "
                           "parameters or webhook; use a new key for a new job")
        return existing

    def _known_photo(self, tenant: Tenant, photo_sha256: str) -> dict | None:
        """The embedding cache at submit time: a photo already rejected is refused now, with the same message."""
        latest = self.fingerprints.latest if self.fingerprints else None
        if latest is None or not self.settings.caches.embeddings:
            return None
        entry = self.store.cache_get(EMBEDDING, embedding_key(tenant.id, photo_sha256, latest), tenant.id)
        if entry and entry.get("status") == "rejected":
            raise ApiError(422, entry["code"], entry["message"])
        return entry

    # -- the rest ---------------------------------------------------------------------------------------------

    async def job(self, tenant: Tenant, job_id: str) -> Job:
        job = await asyncio.to_thread(self.store.job, tenant.id, job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no video {job_id} for this API key")
        return job

    async def ready(self) -> dict[str, Any]:
        def probe() -> bool:
            with TalkingHeadClient(Endpoint(self.settings.triton_url, "grpc"), timeout_s=3.0) as client:
                return client.is_ready()

        triton = await asyncio.to_thread(probe)
        counts = await asyncio.to_thread(self.store.counts)
        caches = self.fingerprints.status if self.fingerprints else "off: disabled in the settings"
        return {"triton_ready": triton, "draining": self.draining, "caches": caches, "jobs": counts}


def _parse_parameters(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(422, "bad_parameters", f"parameters must be a JSON object: {exc}") from None
    except RecursionError:
        raise ApiError(422, "bad_parameters", "parameters are nested too deeply; send a flat JSON object such as "
                                              '{"width": 512}') from None
    except ValueError as exc:  # an integer of thousands of digits (Python's int-from-string limit)
        raise ApiError(422, "bad_parameters", f"parameters hold a number that is too long: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(422, "bad_parameters", 'parameters must be a JSON object such as {"width": 512}')
    try:
        # A lone surrogate (\ud800 in the JSON text) is no character: it could be stored, hashed or sent nowhere.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(422, "bad_parameters", "parameters hold a \\u escape that is not a character (a lone UTF-16 "
                                              "surrogate); send the text as UTF-8") from None
    except (RecursionError, ValueError):  # nested just below the parser's limit
        raise ApiError(422, "bad_parameters", "parameters are nested too deeply; send a flat JSON object") from None
    try:
        canonical_parameters(value)
    except ParameterError as exc:
        raise ApiError(422, "bad_parameter", str(exc)) from None
    return value


bearer = HTTPBearer(auto_error=False, description="a talkinghead API key (thk_...)")


async def tenant_of(request: Request,
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Tenant:
    """Authenticate the API key, then spend one token of the tenant's rate limit."""
    gateway: Gateway = request.app.state.gateway
    # The real client address: uvicorn replaces the connecting one with X-Forwarded-For only for the proxies in
    # http.trusted_proxies (serve.py).
    address = request.client.host if request.client else "unknown"
    try:
        tenant = await asyncio.to_thread(gateway.tenants.authenticate, request.headers.get("authorization"))
    except AuthError as exc:
        subjects = (address,) if exc.prefix is None else (address, key_subject(exc.prefix))
        wait = await asyncio.to_thread(gateway.auth_limiter.retry_after, *subjects)
        if wait > 0:
            raise ApiError(429, "auth_rate_limited", f"too many failed authentications from this address or with "
                           f"this key; retry in {wait:.0f} s", {"Retry-After": str(int(wait) + 1)}) from None
        await asyncio.to_thread(gateway.auth_limiter.failed, *subjects)
        raise ApiError(401, "unauthorized", str(exc), {"WWW-Authenticate": "Bearer"}) from None
    try:
        await asyncio.to_thread(gateway.tenants.check_rate, tenant)
    except QuotaExceeded as exc:
        raise ApiError(429, exc.code, str(exc), {"Retry-After": str(int(exc.retry_after_s) + 1)}) from None
    return tenant


Authed = Annotated[Tenant, Depends(tenant_of)]


def create_app(settings: GatewaySettings) -> FastAPI:
    gateway = Gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    # Swagger UI's JavaScript and CSS come from the installed fastapi-offline package, not a CDN: /docs works in a
    # VPC or on-prem without internet.
    app = FastAPIOffline(title="talkinghead gateway", version=__version__, lifespan=lifespan,
                  description="Photo + speech -> a lip-synced, signed talking-head MP4. Jobs run on tritonserver; "
                              "authenticate with `Authorization: Bearer <API key>`.")
    app.state.gateway = gateway

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": {"code": exc.code, "message": str(exc)}}, exc.status, headers=exc.headers)

    @app.post("/v1/videos", status_code=202, openapi_extra={"requestBody": UPLOAD_SCHEMA},
              summary="Submit a job", responses={200: {"description": "replay of an Idempotency-Key"},
                                                 413: {"description": "a file is over the size limit"},
                                                 422: {"description": "unusable input; the message says why"},
                                                 429: {"description": "quota or rate limit"}})
    async def submit(request: Request, tenant: Authed,
                     idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None) -> JSONResponse:
        job, created = await gateway.submit(tenant, request, idempotency_key)
        headers = {"Location": f"/v1/videos/{job.id}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(job_view(job), 202 if created else 200, headers=headers)

    @app.get("/v1/videos/{job_id}", summary="Job status, progress and QA summary")
    async def status(job_id: str, tenant: Authed) -> JSONResponse:
        return JSONResponse(job_view(await gateway.job(tenant, job_id)))

    def _ready(job: Job) -> dict:
        if job.state != SUCCEEDED:
            detail = f" ({job.progress:.0%})" if job.state == RUNNING else ""
            if job.error_message:
                detail = f": {job.error_message}"
            raise ApiError(409, "not_ready", f"video {job.id} is {job.state}{detail}; its content exists once it "
                                             "has succeeded")
        return job.result

    @app.get("/v1/videos/{job_id}/content", summary="The signed MP4", response_class=FileResponse,
             responses={200: {"content": {"video/mp4": {}}}, 409: {"description": "not finished"}})
    async def content(job_id: str, tenant: Authed):
        result = _ready(await gateway.job(tenant, job_id))
        key = result["video_key"]
        headers = {"ETag": f'"{result["sha256"]}"', "X-Content-SHA256": result["sha256"]}
        path = gateway.storage.local_path(key)
        if path is not None:
            return FileResponse(path, media_type="video/mp4", filename=f"{job_id}.mp4", headers=headers)
        headers.update({"Content-Length": str(result["bytes"]),
                        "Content-Disposition": f'attachment; filename="{job_id}.mp4"'})
        return StreamingResponse(iterate_in_threadpool(gateway.storage.iter_chunks(key)), media_type="video/mp4",
                                 headers=headers)

    @app.get("/v1/videos/{job_id}/report", summary="QA report, pre-processing report and delivery details")
    async def report(job_id: str, tenant: Authed) -> JSONResponse:
        result = _ready(await gateway.job(tenant, job_id))
        body = without_paths(json.loads(await asyncio.to_thread(gateway.storage.get_bytes, result["report_key"])))
        body["cache"] = {"status": result.get("cache"), "cached_from": result.get("cached_from")}
        return JSONResponse(body)

    @app.get("/v1/videos/{job_id}/webhooks", summary="Webhook deliveries of a job and every attempt")
    async def webhooks(job_id: str, tenant: Authed) -> JSONResponse:
        job = await gateway.job(tenant, job_id)
        return JSONResponse({"deliveries": await asyncio.to_thread(gateway.store.deliveries, tenant.id, job.id)})

    @app.delete("/v1/videos/{job_id}", summary="Cancel a job, or erase its data (?erase=inputs|all)",
                responses={202: {"description": "cancel requested; the job stops at its next chunk"},
                           409: {"description": "already finished (cancel), or still running (erase)"}})
    async def cancel(job_id: str, tenant: Authed, erase: str | None = None) -> JSONResponse:
        if erase is not None:
            return JSONResponse(await _erase(gateway.retention.erase_job, tenant.id, job_id, erase))
        before = await gateway.job(tenant, job_id)
        if before.state == HELD:
            withdrawn = await asyncio.to_thread(gateway.review.withdraw, tenant.id, job_id)
            if withdrawn is not None:
                return JSONResponse(job_view(withdrawn))
            before = await gateway.job(tenant, job_id)  # decided meanwhile
        if before.terminal and before.state != CANCELLED:
            raise ApiError(409, "already_finished", f"video {job_id} already {before.state}; nothing to cancel")
        job = await asyncio.to_thread(gateway.store.cancel_job, tenant.id, job_id, webhook_event)
        return JSONResponse(job_view(job), 202 if job.state == RUNNING else 200)

    async def _erase(action, *args) -> dict:
        try:
            return await asyncio.to_thread(action, *args)
        except EraseRefused as exc:
            raise ApiError(exc.status, exc.code, str(exc)) from None

    @app.delete("/v1/data", summary="Erase the data of every finished job of this tenant (?erase=inputs|all)")
    async def erase_tenant(tenant: Authed, erase: str | None = None) -> JSONResponse:
        return JSONResponse(await _erase(gateway.retention.erase_tenant, tenant.id, erase))

    add_review_routes(app)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", summary="Readiness: tritonserver reachable, not draining")
    async def readyz() -> JSONResponse:
        state = await gateway.ready()
        ok = state["triton_ready"] and not state["draining"]
        return JSONResponse({"status": "ready" if ok else "not_ready", **state}, 200 if ok else 503)

    return app
