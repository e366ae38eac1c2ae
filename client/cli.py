"""`talkinghead` command line: serve, watchdog, weights, export, validate, preprocess, generate, demo, verify, audit,
gateway, submit, job."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
import typing
from collections.abc import Iterator
from pathlib import Path

from tritonclient.utils import InferenceServerException

from python_backends.contract import PUBLIC_PARAMETERS, JobParams, cli_flag
from python_backends.errors import WeightsUnavailable
from python_backends.weights import WEIGHTS_ENV

from .cli_delivery import DeliveryOptionError, add_delivery_options
from .cli_delivery import add_commands as add_delivery_commands
from .cli_gateway import GatewayCliError
from .cli_gateway import add_commands as add_gateway_commands
from .files import file_problem
from .server import ServerError, ServerOptions, TritonServer, free_port, serve_forever
from .triton_client import PROTOCOLS, Endpoint, RequestRejected, ServerUnavailable, TalkingHeadClient

SAMPLES = Path(__file__).resolve().parent / "samples"
SAMPLE_PHOTO = SAMPLES / "astronaut.png"
SAMPLE_AUDIO = SAMPLES / "speech.wav"

EXIT_REJECTED = 2
EXIT_UNAVAILABLE = 3
EXIT_HELD = 4  # written, but the content policy holds it for a person's review (client/content_policy.py)


class CliError(Exception):
    """Printed as `error: ...` with exit code 1; never a traceback."""


# Larger than any upload the server accepts (the driving-video limit is 200 MB); checked before reading so that a
# device such as /dev/zero or a FIFO cannot make the CLI read forever.
MAX_INPUT_BYTES = 512_000_000


def _read(path: Path, what: str) -> bytes:
    problem = file_problem(path)
    if problem:
        raise CliError(f"{what} {path} {problem}; give a file")
    try:
        size = Path(path).stat().st_size
        if size > MAX_INPUT_BYTES:
            raise CliError(f"{what} {path} is {size / 1e6:.0f} MB; the server takes at most "
                           f"{MAX_INPUT_BYTES / 1e6:.0f} MB")
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {what} {path}: {exc.strerror}") from None


def _add_server_options(parser: argparse.ArgumentParser, ports: bool = True) -> None:
    if ports:
        parser.add_argument("--http-port", type=int, default=8000)
        parser.add_argument("--grpc-port", type=int, default=8001)
        parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--model-config-name", default=None,
                        help="Triton --model-config-name: use configs/<name>.pbtxt where a model has one")
    parser.add_argument("--weights", type=Path, default=None,
                        help=f"folder of official checkpoints (<dir>/<model>/<file>); default ${WEIGHTS_ENV}")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--commercial", action="store_true",
                        help="refuse weights whose licence forbids commercial use (every model's `commercial`)")


def _server_options(args: argparse.Namespace, ephemeral: bool) -> ServerOptions:
    ports = (free_port(), free_port(), free_port()) if ephemeral else (args.http_port, args.grpc_port,
                                                                     args.metrics_port)
    return ServerOptions(
        http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
        model_config_name=args.model_config_name, weights=args.weights, log_verbose=args.log_verbose,
        commercial=args.commercial,
    )


@contextlib.contextmanager
def _endpoint(args: argparse.Namespace) -> Iterator[Endpoint]:
    """Use the server at --url when it answers; otherwise start a private one for this command."""
    if args.url:
        endpoint = Endpoint(args.url, args.protocol)
        with TalkingHeadClient(endpoint) as probe:
            if not probe.is_ready():
                raise CliError(f"no ready tritonserver at {args.url}; start one with `talkinghead serve`")
        yield endpoint
        return
    options = _server_options(args, ephemeral=True)
    print("starting a private tritonserver (pass --url to use a running one) ...", file=sys.stderr)
    with TritonServer(options) as server:
        print(f"tritonserver ready (log: {server.log_path})", file=sys.stderr)
        yield Endpoint(options.grpc_url if args.protocol == "grpc" else options.http_url, args.protocol)


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="host:port of a running tritonserver (gRPC or HTTP port)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    _add_server_options(parser, ports=False)


def cmd_serve(args: argparse.Namespace) -> int:
    return serve_forever(_server_options(args, ephemeral=False))


def cmd_watchdog(args: argparse.Namespace) -> int:
    import logging
    import os
    import signal
    import threading

    from .stub_watchdog import TOKEN_ENV, run_beside

    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise CliError(f"set {TOKEN_ENV} to the token tritonserver's repository API was locked with "
                       "(--http-restricted-api=model-repository:talkinghead-admin=<token>)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run_beside(args.http_url, token, stop, args.interval)
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from python_backends.catalog import ROLES, config_model, weights_for
    from python_backends.licences import refusal
    from python_backends.settings import parse_bool
    from python_backends.weights import weights_root

    from .repository import config_path, load_config, parameters

    root = args.weights or weights_root()
    rows = []
    for model in ROLES:
        params = parameters(load_config(config_path(config_model(model), args.model_config_name)))
        choice = weights_for(model, params, root)
        row = choice.as_dict(with_hash=not args.no_hash)
        if args.commercial or parse_bool(params.get("commercial", "false"), "commercial"):
            row["refused"] = refusal(choice)  # what `serve --commercial` would refuse to load, and why
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"weights root: {root or f'(none: set --weights or ${WEIGHTS_ENV})'}")
    for row in rows:
        print(f"\n{row['model']}: {row['engine']} [{row['source']}]")
        for key in ("path", "parts", "sha256", "licence", "commercial_use", "commercial_alternative", "note",
                    "refused"):
            if row.get(key):
                label = {"commercial_use": "commerce", "commercial_alternative": "instead"}.get(key, key)
                print(f"  {label:8} {', '.join(row[key]) if key == 'parts' else row[key]}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from python_backends.export import EXPORTERS, export_model

    models = args.models or list(EXPORTERS)
    for model in models:
        if model not in EXPORTERS:
            raise CliError(f"no ONNX export for {model!r}; choose from {', '.join(EXPORTERS)}")
    failed = []
    for model in models:
        result = export_model(model, args.out, root=args.weights, opset=args.opset)
        print(json.dumps(result))
        if not result["parity"]:
            failed.append(model)
    if failed:
        raise CliError(f"ONNX Runtime disagrees with PyTorch beyond tolerance for: {', '.join(failed)}")
    return 0


def _job_inputs(args: argparse.Namespace) -> tuple[bytes, bytes | None, bytes | None]:
    """(photo, audio, driving video) bytes from the command line; speech, a driving video or both."""
    if args.audio is None and args.driving_video is None:
        raise CliError("give speech AUDIO, --driving-video VIDEO, or both")
    photo = _read(args.photo, "photo")
    audio = _read(args.audio, "audio") if args.audio else None
    video = _read(args.driving_video, "driving video") if args.driving_video else None
    return photo, audio, video


def _preprocess(args: argparse.Namespace) -> tuple[bytes, dict]:
    photo, audio, video = _job_inputs(args)
    with _endpoint(args) as endpoint, TalkingHeadClient(endpoint) as client:
        return photo, client.preprocess(photo, audio, video)


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        _, report = _preprocess(args)
    except RequestRejected as exc:
        print(json.dumps({"verdict": "rejected", "code": exc.code, "message": str(exc)}, indent=2))
        return EXIT_REJECTED
    summary = {k: report[k] for k in ("verdict", "photo", "head_pose", "selected_face")}
    summary["faces"] = len(report["faces"])
    if "audio" in report:
        summary["audio_duration_s"] = report["audio"]["duration_s"]
    if "driving_video" in report:
        summary["driving_video"] = report["driving_video"]
    print(json.dumps(summary, indent=2))
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from .overlay import render_overlay

    try:
        photo, report = _preprocess(args)
    except RequestRejected as exc:
        print(f"rejected ({exc.code}): {exc}", file=sys.stderr)
        return EXIT_REJECTED
    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "preprocess_report.json"
    report_path.write_text(json.dumps(report, indent=2))
    overlay_path = render_overlay(photo, report, args.out / "preprocess_overlay.png")
    print(f"verdict: {report['verdict']}; {len(report['faces'])} face(s); yaw {report['head_pose']['yaw']:+.1f} deg")
    print(f"report:  {report_path.resolve()}")
    print(f"overlay: {overlay_path.resolve()}")
    return 0


GENERATION_OPTIONS = PUBLIC_PARAMETERS


def cmd_generate(args: argparse.Namespace) -> int:
    from .cli_delivery import DELIVERY_ERRORS, delivery_options, print_delivery
    from .compliance import JobInputs
    from .contact_sheet import SegmentThumbnails, render_contact_sheet
    from .delivery import DeliverySession, NoFrames
    from .policy import policy_of

    if args.protocol != "grpc":
        raise CliError("generate streams over gRPC: use --protocol grpc (the default)")
    photo, audio, video = _job_inputs(args)
    parameters = {k: getattr(args, k) for k in GENERATION_OPTIONS if getattr(args, k) is not None}
    encode, compliance = delivery_options(args)
    out: Path = args.output
    thumbnails = SegmentThumbnails()

    def progress(chunk) -> None:
        thumbnails.add(chunk.info.get("segment", 0), chunk.start_frame, chunk.frames)
        done = chunk.start_frame + len(chunk.frames)
        qa = chunk.info.get("qa", {})
        verdict = f" segment {qa['segment']}: {qa['verdict']}" if qa else ""
        print(f"\rchunk {len(session.chunks):3d}: frames {done}/{chunk.total_frames} "
              f"({100 * done / max(1, chunk.total_frames):3.0f}%){verdict}   ", end="", file=sys.stderr, flush=True)

    session: DeliverySession | None = None
    try:
        session = DeliverySession(out, JobInputs(photo, audio, video, parameters), encode, compliance,
                                  policy_of(args.policy_profile), on_chunk=progress)
        with _endpoint(args) as endpoint, TalkingHeadClient(endpoint) as client:
            session.t0 = time.perf_counter()  # time to the first encoded byte counts from the request
            delivery = session.deliver(client.generate(photo, audio, video, session.server_parameters))
        print(file=sys.stderr)
    except BaseException as exc:
        if session is not None and session.chunks:
            print(file=sys.stderr)  # end the progress line, so what follows has a line of its own
        if isinstance(exc, RequestRejected):
            print(f"rejected ({exc.code}): {exc}", file=sys.stderr)
            return EXIT_REJECTED
        if isinstance(exc, (NoFrames, *DELIVERY_ERRORS)):
            raise CliError(str(exc)) from None
        raise
    chunks, report, qa_report, decision = session.chunks, session.job_report, session.qa_report, session.decision
    sidecar = out.with_suffix(".json")
    sidecar.write_text(json.dumps({
        "video": str(out), "engine": chunks[0]["engine"], "label": chunks[0]["label"], "frames": session.frames_written,
        "fps": delivery["encode"]["fps"], "parameters": parameters, "job_report": report, "chunks": chunks,
        # encode, signature, verify, audit, qa_verdict
        **{key: value for key, value in delivery.items() if key != "video"},
    }, indent=2))
    print_delivery(out, delivery, chunks[0]["engine"])
    print(f"details: {sidecar.resolve()}")
    if qa_report is not None:
        qa_path = out.with_suffix(".qa.json")
        qa_path.write_text(json.dumps(qa_report, indent=2))
        sheet = render_contact_sheet(qa_report, thumbnails, out.with_suffix(".qa.png"))
        print(f"QA:      {qa_report['verdict']} -> {qa_path.resolve()}, contact sheet {sheet.resolve()}")
    if args.overlay and report:
        from .overlay import render_overlay

        print(f"overlay: {render_overlay(photo, report, out.with_suffix('.overlay.png')).resolve()}")
    if decision.held:
        print(f"held for review ({decision.profile} profile): {'; '.join(decision.reasons)}; have a person review "
              "it before publishing", file=sys.stderr)
        return EXIT_HELD
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    args.photo, args.audio, args.driving_video = SAMPLE_PHOTO, SAMPLE_AUDIO, None
    args.output, args.overlay = args.out / "demo.mp4", True
    for option in GENERATION_OPTIONS:
        setattr(args, option, None)
    return cmd_generate(args)


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    """One flag per field of the contract's JobParams, typed and documented by it."""
    group = parser.add_argument_group("generation (sent as request parameters; unset = the server's default)")
    hints = typing.get_type_hints(JobParams)
    for item in dataclasses.fields(JobParams):
        kind = next(t for t in (int, float, str) if hints[item.name] is t or t in typing.get_args(hints[item.name]))
        group.add_argument(cli_flag(item.name), dest=item.name, type=kind, choices=item.metadata["choices"],
                           help=item.metadata["help"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="talkinghead", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run tritonserver over model_repository/ and ensembles/")
    _add_server_options(serve)
    serve.set_defaults(func=cmd_serve)

    watchdog = sub.add_parser("watchdog", help="reload models whose python-backend stub died, beside a running "
                                               "tritonserver (the Kubernetes sidecar; `serve` runs it itself)")
    watchdog.add_argument("--http-url", default="127.0.0.1:8000", help="host:port of the server's HTTP endpoint")
    watchdog.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    watchdog.set_defaults(func=cmd_watchdog)

    weights = sub.add_parser("weights", help="list the weights each model will use (path, sha256, licence)")
    weights.add_argument("--weights", type=Path, default=None)
    weights.add_argument("--model-config-name", default=None)
    weights.add_argument("--json", action="store_true")
    weights.add_argument("--no-hash", action="store_true", help="skip hashing large files")
    weights.add_argument("--commercial", action="store_true",
                         help="also say which weights `serve --commercial` would refuse, and what to supply instead")
    weights.set_defaults(func=cmd_weights)

    export = sub.add_parser("export", help="export the vision networks to ONNX and check parity")
    export.add_argument("models", nargs="*")
    export.add_argument("--out", type=Path, default=None, help="default: the weights root, beside the checkpoints")
    export.add_argument("--weights", type=Path, default=None)
    export.add_argument("--opset", type=int, default=17)
    export.set_defaults(func=cmd_export)

    for name, func, help_text in (
        ("validate", cmd_validate, "check a photo and an audio file and print the verdict"),
        ("preprocess", cmd_preprocess, "run pre-processing and write a JSON report and a PNG overlay"),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("photo", type=Path)
        command.add_argument("audio", type=Path, nargs="?", help="speech in any format ffmpeg reads")
        command.add_argument("--driving-video", type=Path, default=None, help="a video whose face drives the photo")
        _add_client_options(command)
        if name == "preprocess":
            command.add_argument("--out", type=Path, default=Path("out"))
        command.set_defaults(func=func)

    generate = sub.add_parser("generate", help="photo + speech (and/or a driving video) -> talking-head MP4")
    generate.add_argument("photo", type=Path)
    generate.add_argument("audio", type=Path, nargs="?", help="speech in any format ffmpeg reads")
    generate.add_argument("--driving-video", type=Path, default=None)
    generate.add_argument("-o", "--output", type=Path, default=Path("out/talkinghead.mp4"))
    generate.add_argument("--overlay", action="store_true", help="also write the pre-processing overlay PNG")
    _add_generation_options(generate)
    add_delivery_options(generate)
    _add_client_options(generate)
    generate.set_defaults(func=cmd_generate)

    demo = sub.add_parser("demo", help="the main job on the bundled sample photo and speech")
    demo.add_argument("--out", type=Path, default=Path("out"))
    add_delivery_options(demo)
    _add_client_options(demo)
    demo.set_defaults(func=cmd_demo)
    add_delivery_commands(sub)  # verify, audit verify
    add_gateway_commands(sub, _add_generation_options, GENERATION_OPTIONS)  # gateway, submit, job
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, ServerError, DeliveryOptionError, GatewayCliError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ServerUnavailable, WeightsUnavailable) as exc:
        print(f"unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except InferenceServerException as exc:
        print(f"error: the server failed the request: {exc.message()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

