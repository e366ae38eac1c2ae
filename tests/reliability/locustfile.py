"""Locust users for the gateway load run (tests/reliability/test_gateway_load.py starts it headless).

Each user is a client of one tenant: it submits new jobs (a fresh seed: real generation), repeats of one job (the
output cache answers them) and polls its jobs. Every accepted job id is appended to $TALKINGHEAD_LOAD_JOBS so that
the test can account for each one afterwards: completed, failed, or lost.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from locust import HttpUser, between, task

SAMPLES = Path(__file__).resolve().parents[2] / "client" / "samples"
PHOTO = (SAMPLES / "astronaut.png").read_bytes()
SPEECH = (SAMPLES / "speech.wav").read_bytes()
BASE = {"fps": 5, "width": 128, "height": 128, "max_duration_s": 1}


class Client(HttpUser):
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {os.environ['TALKINGHEAD_LOAD_API_KEY']}"
        self.jobs: list[str] = []

    def _submit(self, parameters: dict, name: str) -> None:
        files = {"photo": ("photo.png", PHOTO, "image/png"), "audio": ("speech.wav", SPEECH, "audio/wav")}
        with self.client.post("/v1/videos", files=files, data={"parameters": json.dumps(parameters)}, name=name,
                              catch_response=True) as response:
            if response.status_code in (200, 202):
                job_id = response.json()["id"]
                self.jobs.append(job_id)
                with open(os.environ["TALKINGHEAD_LOAD_JOBS"], "a") as out:
                    out.write(f"{job_id} {response.status_code}\n")
                response.success()
            elif response.status_code == 429:
                with open(os.environ["TALKINGHEAD_LOAD_JOBS"], "a") as out:
                    out.write("- 429\n")
                response.success()  # back-pressure (quota, queue cap or rate limit), counted by the test
            else:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")

    @task(2)
    def submit_new(self) -> None:
        self._submit({**BASE, "seed": random.randrange(1 << 30)}, "POST /v1/videos (new)")

    @task(2)
    def submit_repeat(self) -> None:
        self._submit({**BASE, "seed": 7}, "POST /v1/videos (repeat)")

    @task(5)
    def poll(self) -> None:
        if self.jobs:
            self.client.get(f"/v1/videos/{random.choice(self.jobs)}", name="GET /v1/videos/{id}")
