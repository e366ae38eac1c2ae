"""Soak: small talking_head jobs back to back through a real tritonserver, counting stubs that died.

Clients stream 256x256 jobs of the sample photo and speech over gRPC (the preview engine, every gate on); every
third job stops reading after its first chunk, so cancelled streams are in the mix. The stub watchdog reloads a
model whose stub dies and records it: a dead stub is a crash (a fault test kills stubs on purpose; this kills
none).

    python perf/stream_soak.py --minutes 10 --out perf/results/stream_soak_cpu.json

Run from another checkout (the script copied there) to compare its code under the same load.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from results_file import hardware, write_json  # noqa: E402  (perf/ is on sys.path)

from client.cli import SAMPLE_AUDIO, SAMPLE_PHOTO
from client.server import PROJECT_ROOT, ServerOptions, TritonServer, free_port
from client.triton_client import Endpoint, TalkingHeadClient

PARAMETERS = {"fps": 10, "chunk_frames": 8, "width": 256, "height": 256, "seed": 1}
STOP_EARLY_EVERY = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("perf/results/stream_soak_cpu.json"))
    parser.add_argument("--label", default="", help="what code this run measures, when it is not the commit's")
    args = parser.parse_args(argv)
    photo, speech = SAMPLE_PHOTO.read_bytes(), SAMPLE_AUDIO.read_bytes()
    options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                            weights=Path(tempfile.mkdtemp(prefix="soak-no-weights-")))
    lock = threading.Lock()
    jobs = {"finished": 0, "stopped_early": 0, "failed": 0}
    failures: list[str] = []
    seconds = args.minutes * 60

    with TritonServer(options) as server:
        end = time.monotonic() + seconds

        def client_loop() -> None:
            with TalkingHeadClient(Endpoint(options.grpc_url, "grpc")) as client:
                count = 0
                while time.monotonic() < end:
                    count += 1
                    early = count % STOP_EARLY_EVERY == 0
                    try:
                        chunks = iter(client.generate(photo, speech, parameters=PARAMETERS))
                        if early:
                            next(chunks)
                        else:
                            for _ in chunks:
                                pass
                        kind = "stopped_early" if early else "finished"
                    except Exception as exc:  # a dead stub shows as a job without keep-alives for 60 s
                        kind = "failed"
                        with lock:
                            failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}"[:300])
                    with lock:
                        jobs[kind] += 1

        started = time.monotonic()
        threads = [threading.Thread(target=client_loop) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall_s = time.monotonic() - started
        deaths = [event.as_dict() for event in (server.watchdog.events if server.watchdog else [])]

    def git(*command: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *command], capture_output=True, text=True).stdout

    commit = git("rev-parse", "--short", "HEAD").strip()
    document = {
        "benchmark": "talking_head soak: small jobs back to back, stubs that died",
        "command": "python perf/stream_soak.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": commit, "label": args.label, "changed_from_commit": git("status", "--porcelain").splitlines(),
        "hardware": hardware(), "clients": args.clients, "parameters": PARAMETERS,
        "stop_early_every": STOP_EARLY_EVERY, "wall_s": round(wall_s, 1), "jobs": jobs,
        "stub_deaths": deaths, "failures": failures,
    }
    write_json(args.out, document)
    print(f"{commit}: {sum(jobs.values())} jobs in {wall_s:.0f} s, {jobs}, {len(deaths)} stub deaths")
    return 0 if not deaths else 1


if __name__ == "__main__":
    sys.exit(main())
