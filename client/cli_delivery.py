"""CLI pieces for delivery: encoding / provenance options of `generate` and `demo`, `verify`, `audit verify`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .audit import AuditError, find_record, printable, verify_log
from .compliance import ComplianceOptions, sha256_file
from .encoding import CODECS, PRESETS, EncodeError, EncodeOptions
from .files import file_problem
from .policy import LOCAL_DEFAULT, PROFILE_NAMES, policy_of
from .provenance import SigningFailed, VerifyResult, verify_video
from .signing import TRUST_ENV, SigningError, load_signing_config, talkinghead_home
from .watermark import WatermarkReading, payload_for_job, read_video

# Raised while finishing a video; `generate` reports them as `error: ...` (exit 1) after removing the partial file.
DELIVERY_ERRORS = (EncodeError, SigningFailed, AuditError)


class DeliveryOptionError(Exception):
    """A bad encoding or signing setting, found before any generation starts."""


def add_delivery_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("encoding and provenance")
    group.add_argument("--codec", choices=tuple(CODECS), default="h264")
    group.add_argument("--crf", type=int, default=None, help="0-51, lower is better (default h264 18, h265 22)")
    group.add_argument("--preset", choices=PRESETS, default="veryfast")
    group.add_argument("--no-sign", action="store_true", help="skip the C2PA manifest (the disclosure stays)")
    group.add_argument("--omit-photo-ingredient", action="store_true",
                       help="keep the source photo's hash out of the manifest (privacy)")
    group.add_argument("--label", action="store_true", help="burn a visible 'AI-generated' label into the frames")
    group.add_argument("--audit-log", type=Path, default=None, help="default: audit.log in $TALKINGHEAD_HOME")
    group.add_argument("--tenant", default=None, help="for the audit log (default $TALKINGHEAD_TENANT or local)")
    group.add_argument("--policy-profile", choices=PROFILE_NAMES, default=LOCAL_DEFAULT.value,
                       help="strict and standard refuse to sign without a configured credential; development "
                            "(default for local runs) makes a development CA on first use (client/policy.py)")


def delivery_options(args: argparse.Namespace) -> tuple[EncodeOptions, ComplianceOptions]:
    """Checked before generation starts, so a bad setting wastes no GPU time; in the development profile the first
    run creates the development signing credential."""
    policy = policy_of(args.policy_profile)
    if args.no_sign and policy.configured_credentials:
        raise DeliveryOptionError(f"--no-sign: the {policy.profile} policy profile delivers signed videos only")
    try:
        encode = EncodeOptions(codec=args.codec, crf=args.crf, preset=args.preset)
        signing = None if args.no_sign else load_signing_config(allow_development=not policy.configured_credentials)
    except (EncodeError, SigningError) as exc:
        raise DeliveryOptionError(f"{exc} (policy profile {policy.profile})") from None
    return encode, ComplianceOptions(signing, omit_photo_ingredient=args.omit_photo_ingredient,
                                     visible_label=args.label or policy.visible_label, audit_log=args.audit_log,
                                     policy_profile=policy.profile.value,
                                     **({"tenant": args.tenant} if args.tenant else {}))


def print_delivery(out: Path, delivery: dict, engine: str) -> None:
    encoded, verified = delivery["encode"], delivery["verify"]
    first = encoded["time_to_first_packet_s"]
    print(f"video:   {out.resolve()} ({encoded['frames']} frames at {encoded['fps']:g} fps, {encoded['codec']}, "
          f"{engine}" + (f"; first encoded byte {first:.2f} s after the request" if first is not None else "") + ")")
    if delivery["signed"]:
        print(f"signed:  C2PA manifest {verified['status']} ({verified['credential']} credential); "
              f"check with `talkinghead verify {out}`")
    else:
        print("signed:  no (--no-sign); the AI disclosure is in the XMP and MP4 tags only")
    print(f"audit:   record {delivery['audit']['seq']} in {delivery['audit']['log']}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    verify = sub.add_parser("verify", help="check an MP4's C2PA Content Credentials; print its AI disclosure and QA")
    verify.add_argument("video", type=Path)
    verify.add_argument("--json", action="store_true")
    verify.add_argument("--trust-anchors", type=Path, default=None,
                        help="PEM root certificates to trust (default $TALKINGHEAD_TRUST_ANCHORS)")
    verify.add_argument("--audit-log", type=Path, default=None,
                        help="also require this file's SHA-256 in a record of this (intact) audit log; a changed "
                             "copy is traced to its record by the invisible watermark")
    verify.add_argument("--no-watermark", action="store_true", help="skip reading the invisible watermark")
    verify.add_argument("--watermark-frames", type=int, default=90, metavar="N",
                        help="frames averaged to read the watermark (default 90)")
    verify.set_defaults(func=cmd_verify)

    audit = sub.add_parser("audit", help="the hash-chained audit log of delivered videos")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    audit_verify = audit_sub.add_parser("verify", help="find edited, removed, reordered or cut-off records")
    audit_verify.add_argument("log", type=Path, nargs="?", default=None,
                              help="default: audit.log in $TALKINGHEAD_HOME (~/.config/talkinghead)")
    audit_verify.add_argument("--json", action="store_true")
    audit_verify.add_argument("--anchor", action="append", metavar="HASH",
                              help="a head hash kept elsewhere that must still be in the log (repeatable)")
    audit_verify.set_defaults(func=cmd_audit_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 when the manifest verifies (and, with --audit-log, the file is in the intact log); 1 otherwise."""
    _require_file(args.video, "video")
    anchors = args.trust_anchors or (Path(os.environ[TRUST_ENV]) if os.environ.get(TRUST_ENV) else None)
    if anchors is not None and file_problem(anchors):
        raise DeliveryOptionError(f"trust anchors {anchors} {file_problem(anchors)}; give a PEM file of root "
                                  "certificates")
    if args.audit_log is not None:
        _require_file(args.audit_log, "audit log")
    if args.watermark_frames < 1:
        raise DeliveryOptionError(f"--watermark-frames must be at least 1, got {args.watermark_frames}")
    result = verify_video(args.video, anchors)
    summary = result.as_dict()
    ok = result.valid
    if not args.no_watermark:
        summary["watermark"] = watermark_summary(read_video(args.video, args.watermark_frames), result)
    if args.audit_log is not None:
        chain = verify_log(args.audit_log)
        record = find_record(args.audit_log, **{"output.sha256": sha256_file(args.video)}) if chain.ok else None
        summary["audit"] = {"log": str(args.audit_log), "chain_ok": chain.ok,
                            "record": {"seq": record["seq"], "job_id": record.get("job_id")} if record else None}
        payload = (summary.get("watermark") or {}).get("payload")
        if chain.ok and record is None and payload:
            # Not the delivered bytes (re-encoded, stripped, cut), but its frames carry a job's watermark.
            traced = find_record(args.audit_log, **{"watermark.payload": payload})
            summary["audit"]["watermark_record"] = (
                {"seq": traced["seq"], "job_id": traced.get("job_id")} if traced else None)
        ok = ok and chain.ok and record is not None
    summary["ok"] = ok
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_verify(args.video, result, summary)
    return 0 if ok else 1


def _require_file(path: Path, what: str) -> None:
    problem = file_problem(path)
    if problem:
        raise DeliveryOptionError(f"{what} {path} {problem}")


def watermark_summary(reading: WatermarkReading, result: VerifyResult) -> dict:
    """The reading, and whether its payload is the one the manifest's job id gives (None: nothing to compare)."""
    summary = reading.as_dict()
    job_id = (result.generation or {}).get("job_id")
    expected = payload_for_job(job_id).hex() if job_id else None
    summary["expected_payload"] = expected
    summary["matches_manifest"] = None if expected is None or not reading.present else reading.payload == expected
    return summary


def _print_watermark(mark: dict) -> None:
    detail = f"sync z {mark['sync_z']}, {mark['frames_read']} frames" if mark["sync_z"] is not None else ""
    if mark["status"] == "present":
        match = {True: "matches the manifest's job", False: "does NOT match the manifest's job",
                 None: "no manifest to compare with"}[mark["matches_manifest"]]
        print(f"watermark:     present, payload {mark['payload']} ({match}; {detail})")
    elif mark["status"] == "unreadable":
        print(f"watermark:     found but its payload is damaged beyond the CRC ({detail})")
    elif mark["status"] == "absent":
        print("watermark:     absent" + (f" (best sync z {mark['sync_z']}, below the threshold)" if detail else ""))
    else:
        print(f"watermark:     not read: {'; '.join(mark['errors'])}")


def _print_verify(path: Path, result: VerifyResult, summary: dict) -> None:
    """The manifest's and the audit record's texts come from files anyone could have made: printed with their
    control and bidi characters escaped, so none can rewrite what the terminal shows."""
    def say(text: str) -> None:
        print(printable(text))

    audit = summary.get("audit")
    if result.valid:
        signer = result.signer or {}
        say(f"{path}: VALID C2PA manifest (signature, claim, assertions and video hash check out)")
        say(f"credential:    {result.credential} (signer {signer.get('common_name')!r}, "
            f"issuer {signer.get('issuer')!r})")
        disclosure = result.disclosure or {}
        say(f"AI disclosure: {disclosure.get('statement', 'none in the manifest')}")
        say(f"source type:   {result.digital_source_type}")
        if disclosure.get("visible_label"):
            say(f"visible label: {disclosure.get('label_text')!r} burned into the frames")
        say(f"QA verdict:    {json.dumps(result.qa_verdict)}")
        generation = result.generation or {}
        say(f"made by:       {generation.get('engine')} (job {generation.get('job_id')})")
        say(f"policy:        {generation.get('policy_profile') or 'not recorded'}")
    else:
        say(f"{path}: FAILED verification ({result.status})")
        for error in result.errors:
            say(f"  - {error}")
    if result.xmp:
        say(f"XMP:           DigitalSourceType {result.xmp.get('digital_source_type')}")
    if "watermark" in summary:
        _print_watermark(summary["watermark"])
    for warning in result.warnings:
        say(f"note:          {warning}")
    if audit is not None:
        if not audit["chain_ok"]:
            say(f"audit:         FAILED: the log {audit['log']} is damaged; run `talkinghead audit verify`")
        elif audit["record"] is None:
            say(f"audit:         FAILED: no record in {audit['log']} has this file's SHA-256 "
                "(changed after delivery, or not delivered from here)")
            traced = audit.get("watermark_record")
            if traced:
                say(f"               its watermark leads to record {traced['seq']} (job {traced['job_id']}): "
                    "a changed copy of that video")
        else:
            say(f"audit:         matches record {audit['record']['seq']} (job {audit['record']['job_id']})")


def cmd_audit_verify(args: argparse.Namespace) -> int:
    log = args.log or talkinghead_home() / "audit.log"
    _require_file(log, "audit log")
    result = verify_log(log, anchors=tuple(args.anchor or ()))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))  # ASCII: every other character is a \u escape
    elif result.ok:
        print(f"{log}: OK, {result.records} records, chain intact"
              + (" and ends at its head" if result.head_checked else ""))
        print(f"head: seq {result.last_seq} {result.last_hash} (keep a copy elsewhere; check later with --anchor)")
    else:
        print(printable(f"{log}: TAMPERED ({len(result.problems)} problem(s)); first: {result.problems[0].message}"))
        for problem in result.problems[1:]:
            print(printable(f"  - {problem.message}"))
    return 0 if result.ok else 1
