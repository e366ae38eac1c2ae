"""CLI pieces for the delivery gateway: `gateway` (serve, add-tenant, add-key, revoke-key), `submit`, `job`.

Nothing here imports the gateway's dependencies (FastAPI, uvicorn, httpx) until a command runs, so the rest of
the CLI works without the `gateway` extra.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

EXIT_REJECTED, EXIT_UNAVAILABLE = 2, 3


class GatewayCliError(Exception):
    """Printed as `error: ...` with exit code 1."""


def _settings(args: argparse.Namespace):
    from .gateway.settings import SettingsError, load_settings

    try:
        return load_settings(args.config, data_dir=getattr(args, "data_dir", None),
                             triton_url=getattr(args, "triton_url", None))
    except SettingsError as exc:
        raise GatewayCliError(str(exc)) from None


def _store(args: argparse.Namespace):
    from .gateway.db import DatabaseError
    from .gateway.store import JobStore
    from .gateway.tenants import MasterKey, MasterKeyError, Tenants
    from .policy import policy_of

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # As the gateway itself: only the development profile makes a master key (client/policy.py).
        master = MasterKey(settings.secrets_path, create=not policy_of(settings.policy_profile).configured_credentials)
        store = JobStore(settings.database)
    except (DatabaseError, MasterKeyError) as exc:
        raise GatewayCliError(str(exc)) from None
    return store, Tenants(store, master, settings.tenant_defaults)


def cmd_gateway(args: argparse.Namespace) -> int:
    import logging

    try:
        from .gateway.app import create_app
        from .gateway.serve import serve
    except ImportError as exc:
        raise GatewayCliError(f"the gateway needs its extra: pip install -e '.[gateway]' ({exc})") from None
    from .gateway.credentials import StartupError
    from .gateway.db import DatabaseError
    from .gateway.storage import StorageError
    from .policy import policy_of

    settings = _settings(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(settings)
    except (DatabaseError, StorageError, StartupError) as exc:
        raise GatewayCliError(str(exc)) from None
    print(f"talkinghead gateway on http://{args.host}:{args.port} (docs /docs), tritonserver {settings.triton_url}, "
          f"data {settings.data_dir.resolve()}, policy profile {settings.policy_profile}", file=sys.stderr, flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1") and \
            not policy_of(settings.policy_profile).configured_credentials:
        print(f"warning: listening on {args.host} with the {settings.policy_profile} policy profile (development "
              "credentials); production sets policy_profile = \"strict\" (client/policy.py)", file=sys.stderr,
              flush=True)
    serve(app, settings, args.host, args.port)
    return 0


def cmd_add_tenant(args: argparse.Namespace) -> int:
    store, tenants = _store(args)
    try:
        created = tenants.create(args.name, args.jobs_per_day, args.concurrent, args.rate, args.burst)
    except ValueError as exc:
        raise GatewayCliError(str(exc)) from None
    finally:
        store.close()
    tenant = created.tenant
    if args.json:
        print(json.dumps({"tenant_id": tenant.id, "name": tenant.name, "api_key": created.api_key,
                          "webhook_secret": created.webhook_secret, "jobs_per_day": tenant.jobs_per_day,
                          "concurrent_jobs": tenant.concurrent_jobs, "rate_per_s": tenant.rate_per_s,
                          "burst": tenant.burst}))
        return 0
    print(f"tenant:         {tenant.name} ({tenant.id})")
    print(f"api key:        {created.api_key}")
    print("                (shown once: only its SHA-256 is stored; `gateway add-key` makes another)")
    print(f"webhook secret: {created.webhook_secret}")
    print(f"limits:         {tenant.jobs_per_day} jobs/day, {tenant.concurrent_jobs} at once, "
          f"{tenant.rate_per_s:g} requests/s (burst {tenant.burst})")
    return 0


def cmd_add_key(args: argparse.Namespace) -> int:
    store, tenants = _store(args)
    try:
        tenant = store.tenant_by_name(args.name)
        if tenant is None:
            raise GatewayCliError(f"no tenant named {args.name!r}; create it with `talkinghead gateway add-tenant`")
        print(tenants.add_key(tenant))
    finally:
        store.close()
    return 0


def _revoke(args: argparse.Namespace, revoke: Callable, what: str) -> int:
    """`revoke(store, prefix)` -> how many keys of `what` kind it revoked."""
    store, _ = _store(args)
    try:
        count = revoke(store, args.prefix)
    finally:
        store.close()
    if not count:
        raise GatewayCliError(f"no active {what} starts with {args.prefix!r} (give the first 10 characters)")
    print(f"revoked {count} {what}(s)")
    return 0


def cmd_revoke_key(args: argparse.Namespace) -> int:
    return _revoke(args, lambda store, prefix: store.revoke_api_key(prefix), "key")


def _tenant_named(store, name: str):
    tenant = store.tenant_by_name(name)
    if tenant is None:
        raise GatewayCliError(f"no tenant named {name!r}; create it with `talkinghead gateway add-tenant`")
    return tenant


def cmd_add_operator(args: argparse.Namespace) -> int:
    from .gateway.review import ReviewQueue

    store, _ = _store(args)
    try:
        tenant = _tenant_named(store, args.tenant) if args.tenant else None
        try:
            key = ReviewQueue(store).add_operator(args.name, tenant.id if tenant else None)
        except ValueError as exc:
            raise GatewayCliError(str(exc)) from None
    finally:
        store.close()
    scope = f"tenant {tenant.name} only" if tenant else "every tenant"
    if args.json:
        print(json.dumps({"name": args.name, "operator_key": key, "scope": tenant.id if tenant else None}))
        return 0
    print(f"operator:     {args.name} (reviews {scope})")
    print(f"operator key: {key}")
    print("              (shown once: only its SHA-256 is stored; use it on /review and /v1/review/...)")
    return 0


def cmd_revoke_operator(args: argparse.Namespace) -> int:
    from .gateway.review import ReviewQueue

    return _revoke(args, lambda store, prefix: ReviewQueue(store).revoke_operator(prefix), "operator key")


def cmd_tenant_settings(args: argparse.Namespace) -> int:
    from .gateway.tenant_settings import TenantSettingsStore

    store, _ = _store(args)
    try:
        tenant = _tenant_named(store, args.name)
        settings = TenantSettingsStore(store.db)
        try:
            current = settings.update(tenant.id, policy_profile=args.policy_profile,
                                      retain_inputs_days=args.retain_inputs_days,
                                      retain_embeddings_days=args.retain_embeddings_days,
                                      retain_outputs_days=args.retain_outputs_days)
        except ValueError as exc:
            raise GatewayCliError(str(exc)) from None
    finally:
        store.close()
    shown = {"policy_profile": current.policy_profile.value if current.policy_profile else None,
             "retain_inputs_days": current.retain_inputs_days,
             "retain_embeddings_days": current.retain_embeddings_days,
             "retain_outputs_days": current.retain_outputs_days}
    print(json.dumps({"tenant": tenant.name, "overrides": shown, "null": "the deployment's setting"}, indent=2))
    return 0


def cmd_erase_tenant(args: argparse.Namespace) -> int:
    from .gateway.app import Gateway
    from .gateway.retention import EraseRefused

    gateway = Gateway(_settings(args))
    try:
        tenant = _tenant_named(gateway.store, args.name)
        try:
            done = gateway.retention.erase_tenant(tenant.id, args.erase, requested_by="operator (CLI)")
        except EraseRefused as exc:
            raise GatewayCliError(str(exc)) from None
    finally:
        gateway.store.close()
    print(json.dumps(done, indent=2))
    return 0


def cmd_export_audit(args: argparse.Namespace) -> int:
    from .audit import AuditError
    from .gateway.audit_store import DatabaseAuditLog
    from .gateway.db import Database, DatabaseError

    settings = _settings(args)
    if settings.delivery.audit_store != "database":
        raise GatewayCliError(f"delivery.audit_store is {settings.delivery.audit_store!r}: the log is the file "
                              f"{settings.audit_path}; check it with `talkinghead audit verify {settings.audit_path}`")
    try:
        db = Database(settings.database)
    except DatabaseError as exc:
        raise GatewayCliError(str(exc)) from None
    try:
        exported = DatabaseAuditLog(db).export(args.out)
    except AuditError as exc:
        raise GatewayCliError(str(exc)) from None
    finally:
        db.close()
    head = f"seq {exported.last_seq} {exported.last_hash}" if exported.records else "empty"
    print(f"exported {exported.records} audit records to {exported.path} (last: {head}); check with "
          f"`talkinghead audit verify {exported.path}`")
    return 0


def _client(args: argparse.Namespace):
    try:
        from .sdk import GatewayClient
    except ImportError as exc:
        raise GatewayCliError(f"the SDK needs httpx: pip install -e '.[gateway]' ({exc})") from None
    try:
        return GatewayClient(args.gateway, args.api_key)
    except ValueError as exc:
        raise GatewayCliError(str(exc)) from None


def _progress(job: dict) -> None:
    done, total = job.get("frames_done") or 0, job.get("total_frames")
    frames = f" frames {done}/{total}" if total else ""
    print(f"\r{job['id']}: {job['status']:9} {100 * job['progress']:3.0f}%{frames}   ", end="", file=sys.stderr,
          flush=True)
    if job.get("review"):  # held by the content policy: the wait goes on until an operator decides
        print(f"\n{job['review']['message']}; waiting for an operator's decision", file=sys.stderr, flush=True)


def cmd_submit(args: argparse.Namespace, options: tuple[str, ...]) -> int:
    from .sdk import GatewayError, JobFailed

    if args.audio is None and args.driving_video is None:
        raise GatewayCliError("give speech AUDIO, --driving-video VIDEO, or both")
    for path in (args.photo, args.audio, args.driving_video):
        if path is not None and not Path(path).is_file():
            raise GatewayCliError(f"{path} does not exist or is not a file")
    parameters = {key: getattr(args, key) for key in options if getattr(args, key, None) is not None}
    with _client(args) as gateway:
        try:
            job = gateway.submit(args.photo, args.audio, args.driving_video, parameters, args.webhook_url,
                                 args.idempotency_key)
            print(f"submitted {job['id']} ({job['status']})", file=sys.stderr)
            if args.no_wait:
                print(json.dumps(job, indent=2))
                return 0
            job = gateway.wait(job["id"], on_progress=_progress)
            print(file=sys.stderr)
            out = gateway.download(job["id"], args.output)
            report = gateway.report(job["id"])
        except JobFailed as exc:
            print(file=sys.stderr)
            print(f"{exc.job['status']} ({exc.code}): {exc.message}", file=sys.stderr)
            return EXIT_UNAVAILABLE if exc.code == "server_unavailable" else \
                1 if exc.job["status"] == "cancelled" else EXIT_REJECTED
        except GatewayError as exc:
            raise GatewayCliError(str(exc)) from None
    out.with_suffix(".json").write_text(json.dumps({"job": job, **{k: v for k, v in report.items()
                                                                   if k != "qa_report"}}, indent=2))
    if report.get("qa_report") is not None:
        out.with_suffix(".qa.json").write_text(json.dumps(report["qa_report"], indent=2))
    qa = job.get("qa") or {}
    print(f"video:   {out.resolve()} ({job['output']['frames']} frames, sha256 {job['output']['sha256'][:16]}..., "
          f"{'signed' if job['output']['signed'] else 'unsigned'}, cache {job['output']['cache']})")
    print(f"QA:      {qa.get('status')}")
    print(f"details: {out.with_suffix('.json').resolve()}")
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    from .sdk import GatewayError

    with _client(args) as gateway:
        try:
            if args.action == "status":
                print(json.dumps(gateway.status(args.job_id), indent=2))
            elif args.action == "cancel":
                print(json.dumps(gateway.cancel(args.job_id), indent=2))
            elif args.action == "report":
                print(json.dumps(gateway.report(args.job_id), indent=2))
            else:
                print(gateway.download(args.job_id, args.output or Path(f"{args.job_id}.mp4")).resolve())
        except GatewayError as exc:
            raise GatewayCliError(str(exc)) from None
    return 0


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="gateway TOML file (see README)")
    parser.add_argument("--data-dir", type=Path, default=None, help="overrides data_dir of the config")


def _remote_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", default="http://127.0.0.1:8080", help="the gateway's base URL")
    parser.add_argument("--api-key", default=None, help="default $TALKINGHEAD_API_KEY")


def add_commands(sub: argparse._SubParsersAction, add_generation_options: Callable[[argparse.ArgumentParser], None],
                 generation_options: tuple[str, ...]) -> None:
    gateway = sub.add_parser("gateway", help="run the HTTP delivery gateway in front of tritonserver; manage tenants")
    _config_options(gateway)
    gateway.add_argument("--host", default="127.0.0.1")
    gateway.add_argument("--port", type=int, default=8080)
    gateway.add_argument("--triton-url", default=None, help="gRPC host:port of tritonserver (overrides the config)")
    gateway.set_defaults(func=cmd_gateway)
    actions = gateway.add_subparsers(dest="gateway_command")
    add = actions.add_parser("add-tenant", help="create a tenant; prints its API key and webhook secret once")
    add.add_argument("name")
    add.add_argument("--jobs-per-day", type=int, default=None)
    add.add_argument("--concurrent", type=int, default=None, help="jobs running at once")
    add.add_argument("--rate", type=float, default=None, help="API requests per second")
    add.add_argument("--burst", type=int, default=None)
    add.add_argument("--json", action="store_true")
    _config_options(add)
    add.set_defaults(func=cmd_add_tenant)
    key = actions.add_parser("add-key", help="another API key for a tenant (for rotation)")
    key.add_argument("name")
    _config_options(key)
    key.set_defaults(func=cmd_add_key)
    for name, help_text, command in (("revoke-key", "revoke API keys by their first characters", cmd_revoke_key),
                                     ("revoke-operator", "revoke operator keys by their first 10 characters",
                                      cmd_revoke_operator)):
        revoke = actions.add_parser(name, help=help_text)
        revoke.add_argument("prefix")
        _config_options(revoke)
        revoke.set_defaults(func=command)
    operator = actions.add_parser("add-operator", help="an operator key for the review queue (/review); shown once")
    operator.add_argument("name", help="who reviews: named in the audit record of every decision")
    operator.add_argument("--tenant", default=None, help="review only this tenant's jobs (default: every tenant)")
    operator.add_argument("--json", action="store_true")
    _config_options(operator)
    operator.set_defaults(func=cmd_add_operator)
    overrides = actions.add_parser("tenant-settings", help="a tenant's own content policy profile and retention "
                                                           "periods; `default` clears one; prints them")
    overrides.add_argument("name")
    overrides.add_argument("--policy-profile", default=None, help="strict | standard | development | default")
    for what in ("inputs", "embeddings", "outputs"):
        overrides.add_argument(f"--retain-{what}-days", default=None,
                               help=f"days {what} are kept (0: until erased) | default")
    _config_options(overrides)
    overrides.set_defaults(func=cmd_tenant_settings)
    erase = actions.add_parser("erase-tenant", help="erase a tenant's inputs (photos, audio, videos, face data) or "
                                                    "all its data, from storage, caches and the database")
    erase.add_argument("name")
    erase.add_argument("--erase", choices=("inputs", "all"), required=True)
    _config_options(erase)
    erase.set_defaults(func=cmd_erase_tenant)
    export = actions.add_parser("export-audit", help="write the audit log kept in the database as a log file + head "
                                                     "for `talkinghead audit verify`")
    export.add_argument("out", type=Path)
    _config_options(export)
    export.set_defaults(func=cmd_export_audit)

    submit = sub.add_parser("submit", help="send a job to a gateway, wait with progress, download the MP4")
    submit.add_argument("photo", type=Path)
    submit.add_argument("audio", type=Path, nargs="?")
    submit.add_argument("--driving-video", type=Path, default=None)
    submit.add_argument("-o", "--output", type=Path, default=Path("out/talkinghead.mp4"))
    submit.add_argument("--webhook-url", default=None)
    submit.add_argument("--idempotency-key", default=None, help="default: a fresh one per command")
    submit.add_argument("--no-wait", action="store_true", help="print the queued job and return")
    add_generation_options(submit)
    _remote_options(submit)
    submit.set_defaults(func=lambda args: cmd_submit(args, generation_options))

    job = sub.add_parser("job", help="status, cancel, report or download of a gateway job")
    job.add_argument("action", choices=("status", "cancel", "report", "download"))
    job.add_argument("job_id")
    job.add_argument("-o", "--output", type=Path, default=None)
    _remote_options(job)
    job.set_defaults(func=cmd_job)
