"""The operators' HTTP API and the review page (review.py holds the queue itself).

    GET  /review                              the review page (static HTML/JS from the package; no CDN)
    GET  /v1/review/jobs                      held jobs waiting for a decision
    GET  /v1/review/jobs/{id}                 the job, its review, the QA report with the content decision
    GET  /v1/review/jobs/{id}/content         the held video
    GET  /v1/review/jobs/{id}/contact-sheet   the QA contact sheet (PNG), where the job has segments
    POST /v1/review/jobs/{id}/approve         {"note": "..."} optional
    POST /v1/review/jobs/{id}/reject          {"reason": "..."} required

Authenticated with operator keys (`Authorization: Bearer tho_...`); tenant keys get 401 here, as operator keys do on
the tenant API. Failed authentications count against the same per-address and per-prefix limit as tenant keys.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import iterate_in_threadpool

from .auth_limit import key_subject
from .review import APPROVED, REJECTED, Operator, ReviewError, reviewable
from .tenants import AuthError
from .views import without_paths

STATIC = resources.files("client.gateway") / "static"  # package data (pyproject.toml)


operator_bearer = HTTPBearer(auto_error=False, scheme_name="OperatorKey", description="an operator key (tho_...)")


async def operator_of(request: Request,
                      _: Annotated[HTTPAuthorizationCredentials | None, Depends(operator_bearer)]) -> Operator:
    """The operator of the request's key (declared as a bearer scheme so /docs can send it)."""
    gateway = request.app.state.gateway
    address = request.client.host if request.client else "unknown"
    try:
        return await asyncio.to_thread(gateway.review.authenticate, request.headers.get("authorization"))
    except AuthError as exc:
        subjects = (address,) if exc.prefix is None else (address, key_subject(exc.prefix))
        wait = await asyncio.to_thread(gateway.auth_limiter.retry_after, *subjects)
        if wait > 0:
            raise ReviewError(429, "auth_rate_limited", f"too many failed authentications from this address or "
                                                        f"with this key; retry in {wait:.0f} s",
                              {"Retry-After": str(int(wait) + 1)}) from None
        await asyncio.to_thread(gateway.auth_limiter.failed, *subjects)
        raise ReviewError(401, "unauthorized", str(exc), {"WWW-Authenticate": "Bearer"}) from None


OperatorDep = Annotated[Operator, Depends(operator_of)]


def _media(gateway: Any, key: str, media_type: str, filename: str) -> Response:
    path = gateway.storage.local_path(key)
    if path is not None:
        return FileResponse(path, media_type=media_type, filename=filename)
    return StreamingResponse(iterate_in_threadpool(gateway.storage.iter_chunks(key)), media_type=media_type)


def add_review_routes(app: FastAPI) -> None:
    gateway = app.state.gateway

    @app.exception_handler(ReviewError)
    async def review_error(request: Request, exc: ReviewError) -> JSONResponse:
        return JSONResponse({"error": {"code": exc.code, "message": str(exc)}}, exc.status, headers=exc.headers)

    @app.get("/review", include_in_schema=False)
    async def review_page() -> HTMLResponse:
        return HTMLResponse(STATIC.joinpath("review.html").read_text(),
                            headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
                                                                "media-src 'self' blob:; style-src 'self'; "
                                                                "frame-ancestors 'none'",
                                     "Cache-Control": "no-store"})

    @app.get("/review/review.js", include_in_schema=False)
    async def review_script() -> Response:
        return Response(STATIC.joinpath("review.js").read_text(), media_type="text/javascript")

    @app.get("/review/review.css", include_in_schema=False)
    async def review_style() -> Response:
        return Response(STATIC.joinpath("review.css").read_text(), media_type="text/css")

    @app.get("/v1/review/jobs", summary="Review: held jobs waiting for an operator", tags=["review"])
    async def pending(operator: OperatorDep) -> JSONResponse:
        return JSONResponse({"jobs": await asyncio.to_thread(gateway.review.pending, operator)})

    @app.get("/v1/review/jobs/{job_id}", summary="Review: a held job, its QA report and content decision",
             tags=["review"])
    async def show(job_id: str, operator: OperatorDep) -> JSONResponse:
        job, review = await asyncio.to_thread(gateway.review.review, operator, job_id)
        result = job.result or {}
        qa_report = None
        if result.get("report_key"):
            stored = json.loads(await asyncio.to_thread(gateway.storage.get_bytes, result["report_key"]))
            qa_report = without_paths(stored.get("qa_report"))
        base = f"/v1/review/jobs/{job_id}"
        links = {"content": f"{base}/content", "approve": f"{base}/approve", "reject": f"{base}/reject"}
        if result.get("contact_sheet_key"):
            links["contact_sheet"] = f"{base}/contact-sheet"
        return JSONResponse({"review": review, "job": reviewable(job), "qa_report": qa_report, "links": links})

    async def _stored(operator: Operator, job_id: str, field: str, what: str) -> str:
        job, _review = await asyncio.to_thread(gateway.review.review, operator, job_id)
        key = (job.result or {}).get(field)
        if not key:
            raise ReviewError(404, "not_found", f"video {job_id} has no {what}")
        return key

    @app.get("/v1/review/jobs/{job_id}/content", summary="Review: the held video", tags=["review"],
             response_class=FileResponse, responses={200: {"content": {"video/mp4": {}}}})
    async def content(job_id: str, operator: OperatorDep) -> Response:
        return _media(gateway, await _stored(operator, job_id, "video_key", "video"), "video/mp4", f"{job_id}.mp4")

    @app.get("/v1/review/jobs/{job_id}/contact-sheet", summary="Review: the QA contact sheet", tags=["review"],
             response_class=FileResponse, responses={200: {"content": {"image/png": {}}}})
    async def contact_sheet(job_id: str, operator: OperatorDep) -> Response:
        key = await _stored(operator, job_id, "contact_sheet_key", "contact sheet (no QA segments)")
        return _media(gateway, key, "image/png", f"{job_id}.png")

    @app.post("/v1/review/jobs/{job_id}/approve", summary="Review: approve; the tenant's job succeeds",
              tags=["review"], responses={409: {"description": "already decided or no longer held"}})
    async def approve(job_id: str, operator: OperatorDep,
                      body: Annotated[dict | None, Body()] = None) -> JSONResponse:
        note = (body or {}).get("note")
        job = await asyncio.to_thread(gateway.review.decide, operator, job_id, APPROVED,
                                      note if isinstance(note, str) else None)
        return JSONResponse(reviewable(job))

    @app.post("/v1/review/jobs/{job_id}/reject", summary="Review: reject with a reason; the tenant's job fails",
              tags=["review"], responses={409: {"description": "already decided or no longer held"},
                                          422: {"description": "no reason given"}})
    async def reject(job_id: str, operator: OperatorDep,
                     body: Annotated[dict | None, Body()] = None) -> JSONResponse:
        reason = (body or {}).get("reason")
        if not isinstance(reason, str):
            raise ReviewError(422, "reason_missing", 'send the reason as JSON: {"reason": "..."}')
        job = await asyncio.to_thread(gateway.review.decide, operator, job_id, REJECTED, reason)
        return JSONResponse(reviewable(job))
