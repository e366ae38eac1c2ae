"""One delivery session: the server's stream of chunks -> the encoder -> the content policy's decision -> the AI
disclosure and C2PA signature (with the QA verdict and that decision) -> the audit record. `talkinghead generate`
and the gateway's workers both deliver through it, so a local MP4 and a served one are made the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from python_backends.contract import NO_SUPER_RESOLUTION, OUTPUT_PARAMETERS, parse_job_params
from python_backends.errors import InputError

from .compliance import ComplianceOptions, CompliantVideoWriter, JobInputs
from .content_policy import ContentDecision, decide
from .encoding import EncodeOptions
from .policy import Policy
from .provenance import QA_NOT_RUN
from .triton_client import RequestRejected, StreamedChunk


class NoFrames(Exception):
    """The server ended the stream without sending a frame."""


def qa_summary(report: dict) -> dict:
    """What the C2PA assertion and the audit log record of the QA report: the verdict and each gate's status."""
    return {"status": report["verdict"], "schema_version": report["schema_version"],
            "gates": {name: gate["status"] for name, gate in report["gates"].items()},
            # Strings: c2pa-python 0.38 stores a list of small integers as a byte string ([0] comes back "AA==").
            "segments_for_review": [str(i) for i in report["segments_for_review"]], "rerolls": report["rerolls"],
            # One number, not a list: float arrays do not survive the manifest round trip (c2pa-python 0.38).
            "identity_min_window_cosine": min((w["mean_cosine"] for w in report["identity"]["windows"]), default=None)}


def encoder_resize(parameters: dict, encode: EncodeOptions) -> tuple[dict, EncodeOptions]:
    """(the parameters to send talking_head, the encode options): a job's output size moves from the server to the
    encoder, which scales in its colour conversion. Why: the server then streams the generated frames (at 832x480,
    5.2x fewer bytes than 1920x1080 RGB through Triton and gRPC) and skips its resize; the encoder's one swscale
    pass replaces the server's resize and the RGB -> YUV conversion. The job's parameters (manifest, audit, caches)
    keep the size. Raises RequestRejected, as the server would, for a size the contract refuses."""
    sizes = {name: parameters[name] for name in OUTPUT_PARAMETERS if name in parameters}
    if not sizes:
        return dict(parameters), encode
    try:
        size = parse_job_params(sizes).output_size
    except InputError as exc:
        raise RequestRejected(str(exc), exc.code) from None
    rest = {name: value for name, value in parameters.items() if name not in sizes}
    return rest, (replace(encode, size=size) if size else encode)


class DeliverySession:
    """Encodes one job's chunks as they arrive and delivers the signed MP4 at `out`.

    `on_job_report` hears the pre-processing report (first chunk) and `on_chunk` every chunk with frames, after it
    was encoded; either may raise to stop the session (the MP4 is then removed, never left truncated). `policy`
    decides whether the video is delivered or held for review (`decision`); the decision rides in the QA verdict
    (C2PA assertion, audit record) and in the QA report. The job's output size is the encoder's to make
    (`encoder_resize`): send talking_head `server_parameters`, not the job's own.
    """

    def __init__(self, out: Path, job: JobInputs, encode: EncodeOptions, compliance: ComplianceOptions,
                 policy: Policy, t0: float | None = None, on_job_report: Callable[[dict], None] | None = None,
                 on_chunk: Callable[[StreamedChunk], None] | None = None) -> None:
        self.server_parameters, encode = encoder_resize(job.parameters, encode)
        self.out, self.job, self.encode, self.compliance, self.t0 = Path(out), job, encode, compliance, t0
        self.policy, self.on_job_report, self.on_chunk = policy, on_job_report, on_chunk
        self.decision: ContentDecision | None = None
        self.writer: CompliantVideoWriter | None = None
        self.job_report: dict = {}
        self.qa_report: dict | None = None
        self.chunks: list[dict] = []  # each chunk's info, in order

    def add(self, chunk: StreamedChunk) -> None:
        if chunk.qa_report is not None:  # the last response: no frames, the job's QA report
            self.qa_report = chunk.qa_report
            self._note_resize()
            return
        if "job_report" in chunk.info:  # the first chunk carries the pre-processing report
            self.job_report = chunk.info.pop("job_report")
            if self.on_job_report is not None:
                self.on_job_report(self.job_report)
        if self.writer is None:
            self.writer = CompliantVideoWriter(self.out, chunk.fps, self.job, chunk.info, self.job_report,
                                               self.encode, self.compliance, t0=self.t0)
        self.writer.write(chunk.frames)
        self.chunks.append(chunk.info)
        if self.on_chunk is not None:
            self.on_chunk(chunk)

    def _note_resize(self) -> None:
        """The QA report's post-processing says where the frames were resized: here, by the encoder."""
        if self.encode.size is None or self.writer is None:
            return
        height, width = self.writer.frame_size
        if (width, height) == self.encode.size:  # talking_head resized them (a caller that sent it the size)
            return
        self.qa_report.setdefault("post_processing", {})["resize"] = {
            "status": "resized", "from": [width, height], "to": list(self.encode.size), "method": "lanczos",
            "where": "encoder (swscale, in the RGB -> YUV conversion)", "super_resolution": NO_SUPER_RESOLUTION}

    def finish(self) -> dict:
        """The content decision, encode tail, AI disclosure, C2PA signature (with the QA verdict and the decision),
        self-verification, audit record."""
        if self.writer is None:
            raise NoFrames("the server streamed no frames")
        self.decision = decide(self.qa_report, self.policy, self.job.driving_video is not None,
                               self.writer.compliance.visible_label)
        verdict = qa_summary(self.qa_report) if self.qa_report else dict(QA_NOT_RUN)
        verdict["content_policy"] = self.decision.as_dict()
        if self.qa_report is not None:
            self.qa_report["content_policy"] = self.decision.as_dict()
        return self.writer.finish(qa_verdict=verdict)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()

    def deliver(self, stream: Iterable[StreamedChunk], check: Callable[[], None] | None = None) -> dict:
        """Consume `stream` and deliver; on any error (or a hook's stop) the partial MP4 is removed. `check` runs
        before each chunk and before signing, and raises to stop (a cancelled job is neither signed nor audited)."""
        try:
            for chunk in stream:
                if check is not None:
                    check()
                self.add(chunk)
            if self.writer is not None and check is not None:
                check()
            return self.finish()
        except BaseException:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # stops a gRPC stream; cancels the request on the server if it is still going
            self.abort()
            raise

    @property
    def frames_written(self) -> int:
        return self.writer.frames_written if self.writer is not None else 0
