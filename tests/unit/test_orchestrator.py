"""The talking_head orchestrator (python_backends/pipeline.py) over a fake generator and fake judges: the seeds it
derives, the segments it sizes, the next segment's generation overlapping this one's judging (same outputs). The
models are faked; the request contract and the segment loop are real."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from python_backends import contract, pipeline, spec
from python_backends.backlog import Backlog, BacklogJob
from python_backends.errors import ConfigError, InputError
from python_backends.generation.engines import ENGINES, segment_frames, served_frame_count
from python_backends.quality.segment_qa import FAIL, PASS, Gate, SegmentQA


def _segment_qa(frames: np.ndarray, start: int, failures: int, hard: bool = False) -> SegmentQA:
    n = len(frames)
    track = SimpleNamespace(landmarks=np.zeros((n, 68, 2)), boxes=np.zeros((n, 4)))
    gates = [Gate(f"gate{i}", FAIL, "made to fail", hard=hard) for i in range(failures)] or [Gate("lipsync", PASS, "")]
    return SegmentQA(0, start, n, gates, track, [], np.zeros(n), {})


# Every segment segment_s long: what most tests here count on (the shipped short first segment has its own tests).
EVEN = pipeline.TalkingHeadSettings(first_segment_s=0)


class FakeJob:
    """run_talking_head with pre-processing, photo safety, the per-segment judge and the report faked.

    `failures` maps (segment, attempt) to how many gates that attempt fails (`hard`: those stop the job). The
    generator sleeps `generate_s` per request and the judge `judge_s` per attempt; `events` records when each
    ran (and `on_event` hears of it). A generated frame's value is its seed plus the last motion frame's value
    (mod 251), so frames show what they continued from. Request numbers (from 1) in `broken` raise instead."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, total: int, engine_id: str = "preview",
                 fail_attempts: frozenset[tuple[int, int]] = frozenset(), failures: dict | None = None,
                 hard: frozenset[tuple[int, int]] = frozenset(), generate_s: float = 0.0, judge_s: float = 0.0,
                 broken: frozenset[int] = frozenset(), on_event: Callable[[], None] = lambda: None) -> None:
        self.total, self.engine_id, self.on_event = total, engine_id, on_event
        self.failures = {**{key: 1 for key in fail_attempts}, **(failures or {})}
        self.generate_s, self.broken = generate_s, broken
        self.requests: list[dict] = []  # parameters (the job's random stream tokens left out) + what it continued
        self.tokens: list[tuple[str, str, int]] = []  # (stream, stream_after, the value of its frames)
        self.events: list[tuple[str, int, float]] = []  # (what, segment start frame, perf_counter)
        attempts: dict[int, int] = {}

        async def preprocess_job(*_args, **_kwargs):
            return SimpleNamespace(image=np.zeros((64, 64, 3), np.uint8), arrays={}, report={"faces": []})

        async def safety_of_photo(*_args):
            return {"status": "unavailable"}

        async def process_segment(raw, index, start, ctx, call, boundary):
            attempt = attempts[index] = attempts.get(index, -1) + 1
            self._event("judge", start)
            await asyncio.sleep(judge_s)
            self._event("judged", start)
            stops = (index, attempt) in hard
            return raw, _segment_qa(raw, start, self.failures.get((index, attempt), int(stops)), stops)

        monkeypatch.setattr(pipeline, "preprocess_job", preprocess_job)
        monkeypatch.setattr(pipeline, "safety_of_photo", safety_of_photo)
        monkeypatch.setattr(pipeline, "process_segment", process_segment)
        monkeypatch.setattr(pipeline.SourceFace, "from_preprocessed", classmethod(lambda cls, *a: None))
        monkeypatch.setattr(pipeline, "job_report", lambda segments, ctx, **kw: {
            "rerolls": kw["rerolls"], "seeds": [s.seed for s in segments], "frames": [s.frame_count for s in segments]})

    def _event(self, what: str, start: int) -> None:
        self.events.append((what, start, time.perf_counter()))
        self.on_event()

    def stream(self, model, inputs, parameters):
        assert model is spec.VIDEO_GENERATOR
        params = contract.parse_generation_params(parameters)  # the generator's own validation
        motion = inputs.get(spec.MOTION_FRAMES)
        last = int(motion[-1, 0, 0, 0]) if motion is not None else 0
        tokens = ("stream", "stream_after")
        self.requests.append({**{k: v for k, v in parameters.items() if k not in tokens}, "continues_from": last})
        self.tokens.append((params.stream, params.stream_after, (params.seed + last) % 251))
        number = len(self.requests)
        self._event("generate", params.start_frame)
        time.sleep(self.generate_s)
        self._event("generated", params.start_frame)
        if number in self.broken:
            raise RuntimeError(f"generator broke on request {number}")
        count = min(served_frame_count(self.engine_id, params), self.total - params.start_frame)
        frames = np.full((count, 8, 8, 3), (params.seed + last) % 251, np.uint8)
        info = json.dumps({"engine": "fake", "engine_id": self.engine_id}).encode()
        yield {spec.FRAMES: frames, spec.START_FRAME: np.array([params.start_frame], np.int64),
               spec.TOTAL_FRAMES: np.array([self.total], np.int64), spec.FPS: np.array([params.fps]),
               spec.CHUNK_INFO: np.array([info], np.object_)}

    def responses(self, parameters: dict, settings: pipeline.TalkingHeadSettings | None = None,
                  backlog: BacklogJob | None = None) -> Iterator[dict]:
        inputs = {spec.PHOTO_BYTES: np.array([b"photo"], np.object_)}
        return pipeline.run_talking_head(inputs, parameters, None, self.stream,
                                         settings or EVEN, backlog)

    def run(self, parameters: dict, settings: pipeline.TalkingHeadSettings | None = None) -> dict:
        return report_of(list(self.responses(parameters, settings)))


def report_of(responses: list[dict]) -> dict:
    return json.loads(responses[-1][spec.CHUNK_INFO].reshape(-1)[0])["qa_report"]


def test_a_job_seeded_at_the_top_of_the_range_re_rolls(monkeypatch):
    top = contract.MAX_SEED
    job = FakeJob(monkeypatch, total=125, fail_attempts=frozenset({(0, 0)}))
    report = job.run({"seed": top, "fps": 25})
    seeds = [request["seed"] for request in job.requests]
    assert seeds == [top, contract.derive_seed(top, 0, 1)] and all(0 <= s <= top for s in seeds)
    assert report["rerolls"] == 1 and report["seeds"] == [seeds[1]]


NEW_STREAMS = pipeline.TalkingHeadSettings(first_segment_s=0, continue_streams=False)


def test_segments_are_whole_native_clips_of_the_engine(monkeypatch):
    # LiveAvatar's clip is 48 frames at 16 fps (3 s): two clips (6 s, 150 frames at 25 fps) are nearest 5 s.
    assert segment_frames("liveavatar-14B", 5.0, 25.0) == 150 and segment_frames("s2v-14B", 5.0, 25.0) == 125
    assert segment_frames("preview", 5.0, 25.0) == segment_frames(None, 5.0, 25.0) == 125
    job = FakeJob(monkeypatch, total=450, engine_id="liveavatar-14B")
    report = job.run({"engine": "liveavatar-14B", "fps": 25}, NEW_STREAMS)
    assert report["frames"] == [150, 150, 150]
    # Under `auto` the first request is sized before the engine is known, so it asks for whole clips: the generator
    # serves the 5 s as LiveAvatar's nearest two clips; from its answer on the orchestrator sizes them itself.
    job = FakeJob(monkeypatch, total=425, engine_id="liveavatar-14B")
    assert job.run({"fps": 25}, NEW_STREAMS)["frames"] == [150, 150, 125]
    assert [r.get("whole_clips", False) for r in job.requests] == [True, False, False]
    assert all(spec.renders_segments and spec.label for spec in ENGINES.values())


@pytest.mark.parametrize("engine_id, frames", [("s2v-14B", [150, 150]), ("liveavatar-14B", [36, 150, 114]),
                                               ("preview", [36, 150, 114])])
def test_a_short_first_segment_under_auto_costs_no_clip_cut_short(monkeypatch, engine_id, frames):
    # 1.2 s asked before the engine is known: the official S2V serves its whole 5 s clip (one clip either way),
    # LiveAvatar going on with its stream and the preview engine (no native clip) just the 36 frames asked.
    job = FakeJob(monkeypatch, total=300, engine_id=engine_id)
    assert job.run({"fps": 30}, pipeline.TalkingHeadSettings(first_segment_s=1.2))["frames"] == frames
    assert job.requests[0]["frame_count"] == 36 and job.requests[0]["whole_clips"] is True


def test_no_segment_is_shorter_than_one_lip_sync_window(monkeypatch):
    # 0.2 s would be 6 frames: too few for the lip-sync gate (2 x 15 + 1), so the first segment is 31 frames.
    job = FakeJob(monkeypatch, total=300)
    assert job.run({"fps": 30}, pipeline.TalkingHeadSettings(first_segment_s=0.2))["frames"] == [31, 150, 119]


def test_segments_that_continue_the_engines_stream_are_any_length(monkeypatch):
    # With live streams a LiveAvatar segment is no new clip: segment_s as asked (the official S2V still rounds).
    assert segment_frames("liveavatar-14B", 5.0, 25.0, continued=True) == 125
    assert segment_frames("s2v-14B", 4.0, 25.0, continued=True) == 125
    settings = pipeline.TalkingHeadSettings(first_segment_s=1.5)
    job = FakeJob(monkeypatch, total=300, engine_id="liveavatar-14B")
    assert job.run({"engine": "liveavatar-14B", "fps": 30}, settings)["frames"] == [45, 150, 105]


@pytest.mark.parametrize("engine_id, total, frames", [
    ("liveavatar-14B", 300, [31, 150, 88, 31]),  # the tail's QA judges 31 frames, not 119
    ("preview", 300, [31, 150, 88, 31]),
    ("liveavatar-14B", 200, [31, 138, 31]),  # the segment that would reach the end stops 31 frames before it
    ("s2v-14B", 300, [150, 150]),  # whole native clips: never cut short for the tail
])
def test_a_short_last_segment_leaves_the_least_qa_after_the_last_block(monkeypatch, engine_id, total, frames):
    settings = pipeline.TalkingHeadSettings(first_segment_s=1.0, last_segment_s=1.0)
    job = FakeJob(monkeypatch, total=total, engine_id=engine_id)
    assert job.run({"engine": engine_id, "fps": 30}, settings)["frames"] == frames


def test_the_last_segment_is_at_least_one_lip_sync_window(monkeypatch):
    from python_backends.settings import from_mapping

    settings = pipeline.TalkingHeadSettings(first_segment_s=1.0, last_segment_s=0.2)
    job = FakeJob(monkeypatch, total=300, engine_id="liveavatar-14B")
    assert job.run({"engine": "liveavatar-14B", "fps": 30}, settings)["frames"] == [31, 150, 88, 31]
    with pytest.raises(ConfigError, match="last_segment_s"):
        from_mapping(pipeline.TalkingHeadSettings, {"last_segment_s": "-1"})


# ---------------------------------------------------------------- overlapped segments (overlap_segments)

SEQUENTIAL = pipeline.TalkingHeadSettings(first_segment_s=0, overlap_segments=False)
OVERLAPPED = pipeline.TalkingHeadSettings(first_segment_s=0, overlap_segments=True)
GENERATION_THREAD = "talking_head-generation"


def _generation_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(GENERATION_THREAD)]


def _comparable(responses: list[dict]) -> list[dict]:
    """The responses as data, the job's wall time left out (the one field that may differ)."""
    out = []
    for response in responses:
        info = json.loads(response[spec.CHUNK_INFO].reshape(-1)[0])
        info.get("qa_report", {}).pop("elapsed_s", None)
        out.append({**{k: v.tolist() for k, v in response.items() if k != spec.CHUNK_INFO}, "info": info})
    return out


def _outputs(monkeypatch, settings: pipeline.TalkingHeadSettings, **fake) -> tuple[list[dict], FakeJob]:
    job = FakeJob(monkeypatch, **fake)
    return _comparable(list(job.responses({"fps": 25, "seed": 7}, settings))), job


def test_the_next_segment_generates_while_this_one_is_judged_and_the_job_ends_sooner(monkeypatch):
    fake = {"total": 375, "generate_s": 0.25, "judge_s": 0.25}  # three 125-frame segments
    walls = {}
    for name, settings in (("sequential", SEQUENTIAL), ("overlapped", OVERLAPPED)):
        backlog, running = Backlog(), []
        job = FakeJob(monkeypatch, **fake, on_event=lambda b=backlog, r=running: r.append(
            b.snapshot().running_segments))
        began = time.perf_counter()
        responses = list(job.responses({"fps": 25}, settings, backlog.accept()))
        walls[name] = time.perf_counter() - began
        assert report_of(responses)["frames"] == [125, 125, 125]
        at = {(what, start): t for what, start, t in job.events}
        overlapped = at["generate", 125] < at["judged", 0] and at["generate", 250] < at["judged", 125]
        assert overlapped == (name == "overlapped")
        # Gauges: two segments run while one is judged and the next generates; none once the job is done.
        assert max(running) == (2 if name == "overlapped" else 1)
        assert backlog.snapshot().running_segments == backlog.snapshot().queued_segments == 0
    # Sequential: 3 x (0.25 + 0.25) = 1.5 s; overlapped: 0.25 + 3 x 0.25 = 1 s (the last judge cannot overlap).
    # Asked: half that saving (the machine's other load delays both runs).
    print(f"wall time sequential {walls['sequential']:.3f} s, overlapped {walls['overlapped']:.3f} s")
    assert walls["overlapped"] < walls["sequential"] - 0.25
    assert not _generation_threads()


def test_overlap_changes_no_output_re_rolls_included(monkeypatch):
    # Segment 0: attempt 0 fails, 1 passes. Segment 1: every attempt fails, attempt 1 fails fewest (the best,
    # not the last). Segment 2 continues from that attempt in both modes.
    fake = {"total": 375, "failures": {(0, 0): 1, (1, 0): 2, (1, 1): 1, (1, 2): 1}}
    sequential, one_stage = _outputs(monkeypatch, SEQUENTIAL, **fake)
    overlapped, overlap = _outputs(monkeypatch, OVERLAPPED, **fake)
    assert overlapped == sequential
    assert [r["info"]["attempt"] for r in sequential[:-1]] == [1, 1, 0]
    # Every request the sequential path made, the overlapped one made too (plus speculations). Segment 2 was
    # speculated from segment 1's attempts (the last one's may be cancelled unstarted at the job's end) and the
    # best one's was used, not generated again.
    assert all(r in overlap.requests for r in one_stage.requests)
    accepted_0 = contract.derive_seed(7, 0, 1) % 251
    attempts_1 = [(contract.derive_seed(7, 1, n) + accepted_0) % 251 for n in range(3)]  # their frames' values
    segment_2 = [r["continues_from"] for r in overlap.requests if r["start_frame"] == 250]
    assert segment_2[:2] == attempts_1[:2] and segment_2.count(attempts_1[1]) == 1
    assert set(segment_2) <= set(attempts_1) and sequential[2][spec.FRAMES][0][0][0][0] == (
        contract.derive_seed(7, 2, 0) + attempts_1[1]) % 251


def test_a_re_roll_discards_the_speculation_from_the_rejected_attempt(monkeypatch):
    job = FakeJob(monkeypatch, total=250, fail_attempts=frozenset({(0, 0)}))
    responses = list(job.responses({"fps": 25, "seed": 7}, OVERLAPPED))
    # Segment 0 attempt 0, segment 1 from it (speculative), segment 0 attempt 1, segment 1 from attempt 1.
    assert [(r["start_frame"], r["seed"]) for r in job.requests] == [
        (0, 7), (125, contract.derive_seed(7, 1, 0)), (0, contract.derive_seed(7, 0, 1)),
        (125, contract.derive_seed(7, 1, 0))]
    accepted = contract.derive_seed(7, 0, 1) % 251  # attempt 1's frames
    first, second = (int(r[spec.FRAMES][0, 0, 0, 0]) for r in responses[:2])
    assert first == accepted and second == (contract.derive_seed(7, 1, 0) + accepted) % 251


def test_an_error_in_a_speculation_surfaces_when_its_segment_is_needed_and_not_if_discarded(monkeypatch):
    job = FakeJob(monkeypatch, total=250, broken=frozenset({2}))  # request 2: segment 1, speculative
    responses = job.responses({"fps": 25}, OVERLAPPED)
    assert int(next(responses)[spec.START_FRAME][0]) == 0  # segment 0 is out before the error
    with pytest.raises(RuntimeError, match="generator broke on request 2"):
        next(responses)
    assert not _generation_threads()
    # Discarded (segment 0 re-rolled): the job goes on, as if the broken request had never been made.
    fake = {"total": 250, "fail_attempts": frozenset({(0, 0)})}
    sequential, _ = _outputs(monkeypatch, SEQUENTIAL, **fake)
    assert _outputs(monkeypatch, OVERLAPPED, broken=frozenset({2}), **fake)[0] == sequential


def test_a_hard_failure_stops_the_job_after_the_request_in_flight_with_no_thread_left(monkeypatch):
    for settings in (SEQUENTIAL, OVERLAPPED):
        job = FakeJob(monkeypatch, total=250, hard=frozenset({(0, 0)}), generate_s=0.3, judge_s=0.1)
        with pytest.raises(InputError, match="stopped at 0.0 s: the generated video failed the gate0 gate") as err:
            list(job.responses({"fps": 25}, settings))
        assert err.value.code == "content_policy"
        stopped = time.perf_counter()
        generated = [t for what, _, t in job.events if what == "generated"]
        # The speculative request (overlap only) had finished when the error came out; no thread is left.
        assert len(generated) == (2 if settings.overlap_segments else 1) and max(generated) <= stopped
        assert not _generation_threads()


@pytest.mark.parametrize("settings", [SEQUENTIAL, OVERLAPPED], ids=["sequential", "overlapped"])
def test_each_request_names_the_attempt_its_frames_continue_as_the_stream_to_go_on_with(monkeypatch, settings):
    # The generator may go on with the stream of the attempt named `stream_after` instead of starting anew from
    # the motion frames: that attempt must be the one those frames came from, after re-rolls and speculations too.
    fake = {"total": 375, "failures": {(0, 0): 1, (1, 0): 2, (1, 1): 1, (1, 2): 1}}
    job = FakeJob(monkeypatch, **fake)
    list(job.responses({"fps": 25, "seed": 7}, settings))
    made = {stream: value for stream, _, value in job.tokens}
    assert len(made) == len(job.tokens) and all(made)  # one token per attempt
    job_ids = {stream.split(":")[0] for stream in made}
    assert len(job_ids) == 1 and len(job_ids.pop()) == 32  # one unguessable id per job
    for (_stream, after, _value), request in zip(job.tokens, job.requests, strict=True):
        assert bool(after) == (request["start_frame"] > 0)
        if after:
            assert made[after] == request["continues_from"]
    # Re-rolls of segment 1 continue segment 0's accepted attempt (1), not the stream of its attempt 0.
    assert {after for stream, after, _ in job.tokens if stream.split(":")[1:3] in (["1", "1"], ["1", "2"])} == {
        next(s for s in made if s.split(":")[1:3] == ["0", "1"])}


def test_no_stream_tokens_when_continuing_streams_is_off(monkeypatch):
    job = FakeJob(monkeypatch, total=250)
    job.run({"fps": 25}, NEW_STREAMS)
    assert len(job.tokens) == 2 and all(stream == after == "" for stream, after, _ in job.tokens)


def test_a_client_gone_mid_job_leaves_no_thread(monkeypatch):
    job = FakeJob(monkeypatch, total=375, generate_s=0.2, judge_s=0.1)
    responses = job.responses({"fps": 25}, OVERLAPPED)
    next(responses)  # segment 0 out, segment 1 generating
    responses.close()  # waits for segment 1's request (it cannot be cancelled), starts no other
    assert not _generation_threads()
    assert [what for what, start, _ in job.events if start == 125] == ["generate", "generated"]
    assert job.events[-1][:2] == ("generated", 125) and len(job.requests) == 2


def test_a_shorter_first_segment_and_its_re_roll_ask_for_the_same_frames(monkeypatch):
    # LiveAvatar under `auto`: a 3 s first segment is one 48-frame clip; the rest whole clips (7 s to the end).
    settings = pipeline.TalkingHeadSettings(first_segment_s=3.0, continue_streams=False)
    job = FakeJob(monkeypatch, total=300, engine_id="liveavatar-14B", fail_attempts=frozenset({(0, 0)}))
    assert job.run({"fps": 30}, settings)["frames"] == [90, 210]
    first = [r["frame_count"] for r in job.requests if r["start_frame"] == 0]
    assert first == [90, 90]  # the re-roll too, though the engine (and its clip) was known by then


def test_the_overlap_settings_load_from_the_models_parameters():
    from python_backends.settings import from_mapping

    settings = from_mapping(pipeline.TalkingHeadSettings, {"overlap_segments": "false", "first_segment_s": "3"})
    assert settings.overlap_segments is False and settings.first_segment_s == 3.0
    with pytest.raises(ConfigError, match="first_segment_s"):
        from_mapping(pipeline.TalkingHeadSettings, {"first_segment_s": "-1"})
