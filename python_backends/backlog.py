"""The work a decoupled model holds, counted for the autoscaler.

Why: `talking_head` and `video_generator` return from `execute()` at once and run each request on a worker thread
of their own (triton_io.StreamingModel). Triton's queue metrics (`nv_inference_pending_request_count`, queue
duration) therefore never see a request waiting for one of those threads, nor the segments a job still has to
generate. `Backlog` counts them; triton_io publishes them as Triton custom metrics (GAUGE, `model` + `instance` labels),
which prometheus-adapter serves to the HPA (deploy/kubernetes/monitoring).

Per model instance:
- queued jobs: requests accepted by `execute()` that no worker has started yet (cancelled ones excluded);
- queued segments: segments not started yet, over every open job. A job counts one until it says how many it has
  (`plan`), so a queued job of unknown length is still visible; talking_head plans once it knows the speech's length;
- running segments: segments being generated (and, in talking_head, judged) now;
- oldest queued age: seconds the longest-waiting queued job has waited, 0 when none waits.
A request to `video_generator` is one segment (talking_head asks for one segment per request). Whatever way a job
ends (done, failed, cancelled, its client gone), `close()` takes everything it counted out again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Metric family name -> help text. Triton shows them on its metrics port (/metrics), labelled by model.
QUEUED_JOBS = "talkinghead_queued_jobs"
QUEUED_SEGMENTS = "talkinghead_queued_segments"
RUNNING_SEGMENTS = "talkinghead_running_segments"
OLDEST_QUEUED_AGE = "talkinghead_oldest_queued_age_seconds"
GAUGES = {
    QUEUED_JOBS: "Requests accepted by a decoupled model and not started yet (waiting for one of its workers)",
    QUEUED_SEGMENTS: "Video segments not started yet, over all requests the model holds",
    RUNNING_SEGMENTS: "Video segments being generated (and judged, in talking_head) now",
    OLDEST_QUEUED_AGE: "Seconds the longest-waiting queued request has waited; 0 when none waits",
}


@dataclass(frozen=True)
class BacklogSnapshot:
    queued_jobs: int = 0
    queued_segments: int = 0
    running_segments: int = 0
    oldest_queued_age_s: float = 0.0

    def as_metrics(self) -> dict[str, float]:
        return {QUEUED_JOBS: self.queued_jobs, QUEUED_SEGMENTS: self.queued_segments,
                RUNNING_SEGMENTS: self.running_segments, OLDEST_QUEUED_AGE: round(self.oldest_queued_age_s, 3)}


@dataclass(eq=False)
class BacklogJob:
    """One request's share of the backlog; its worker reports progress through it."""

    _backlog: Backlog
    accepted_at: float
    is_cancelled: Callable[[], bool]
    started: bool = field(default=False, init=False)
    closed: bool = field(default=False, init=False)
    planned: int = field(default=1, init=False)  # segments the job has in all; 1 until it knows
    running: int = field(default=0, init=False)
    _begun: set[int] = field(default_factory=set, init=False)  # segments started (a re-generated one counts once)

    @property
    def queued_segments(self) -> int:
        return max(self.planned - len(self._begun), 0)

    def start(self) -> None:
        """A worker took the job."""
        self._backlog._update(self, started=True)

    def plan(self, segments: int) -> None:
        """The job has `segments` segments in all (the ones already started included)."""
        self._backlog._update(self, planned=max(int(segments), 1))

    def begin(self, index: int) -> None:
        """Segment `index` starts running (again, for a re-generated one)."""
        self._backlog._update(self, begin=index)

    def end(self) -> None:
        """The running segment is done (`close` also takes any segment still running out of the count)."""
        self._backlog._update(self, end=True)

    def close(self) -> None:
        """The job ended, however it ended; idempotent."""
        self._backlog._update(self, closed=True)


class Backlog:
    """The open jobs of one model instance. `on_change` runs after every change, outside the lock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[], None] | None = None) -> None:
        self._clock, self._on_change = clock, on_change
        self._jobs: set[BacklogJob] = set()
        self._lock = threading.Lock()

    def accept(self, is_cancelled: Callable[[], bool] = lambda: False) -> BacklogJob:
        job = BacklogJob(self, self._clock(), is_cancelled)
        with self._lock:
            self._jobs.add(job)
        self._changed()
        return job

    def _update(self, job: BacklogJob, started: bool = False, planned: int | None = None, begin: int | None = None,
                end: bool = False, closed: bool = False) -> None:
        with self._lock:
            if job.closed:
                return
            job.started = job.started or started or begin is not None
            if planned is not None:
                job.planned = planned
            if begin is not None:
                job._begun.add(begin)
                job.running += 1
            if end:
                job.running = max(job.running - 1, 0)
            if closed:
                job.closed = True
                self._jobs.discard(job)
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def snapshot(self) -> BacklogSnapshot:
        with self._lock:
            jobs = list(self._jobs)
        now = self._clock()
        # A queued job whose client cancelled (or went away) will never run: it is not backlog. Checked outside the
        # lock, as asking Triton goes through the stub's IPC.
        live = [job for job in jobs if job.started or not _cancelled(job)]
        queued = [job for job in live if not job.started]
        return BacklogSnapshot(
            queued_jobs=len(queued),
            queued_segments=sum(job.queued_segments for job in live),
            running_segments=sum(job.running for job in live),
            oldest_queued_age_s=max((now - job.accepted_at for job in queued), default=0.0),
        )


def _cancelled(job: BacklogJob) -> bool:
    try:
        return bool(job.is_cancelled())
    except Exception:  # the request is gone: nothing will run it
        return True


def segments_in(total_frames: int, length: Callable[[int], int]) -> int:
    """How many segments cover `total_frames`, `length(start)` being the frames of the segment at `start`."""
    count, start = 0, 0
    while start < total_frames:
        start += max(length(start), 1)
        count += 1
    return count
