"""A real gateway process (`talkinghead gateway`) on loopback, in front of a test tritonserver, with tenants made
through the CLI as an operator would. Shared by tests/integration and tests/reliability (tests/ is on sys.path:
pytest puts the folder of the top conftest.py there)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from client.server import free_port

CLI = [sys.executable, "-m", "client.cli"]


class GatewayProcess:
    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log, self.port = config, log, free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> GatewayProcess:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(CLI + ["gateway", "--config", str(self.config), "--port", str(self.port)],
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"gateway exited:\n{self.log.read_text()[-3000:]}"
            try:
                # /readyz answers once the app is up; wait until the model fingerprint (weights listing) is made,
                # so the caches are in use from the first job on.
                if httpx.get(f"{self.url}/readyz", timeout=5).json()["caches"] != "pending":
                    return self
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"gateway did not start:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 120) -> int:  # the gateway drains running jobs for up to 60 s
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def write_config(path: Path, data_dir: Path, triton_url: str, weights: Path | None, extra: str = "",
                 database_url: str | None = None) -> Path:
    """Quick leases and retries for tests; no webhook allowlist unless `extra` adds one. `extra` follows the
    `[caches]` table: keys before its own first table are caches settings."""
    path.write_text(f"""
data_dir = "{data_dir}"
triton_url = "{triton_url}"
{f'database_url = "{database_url}"' if database_url else ""}
lease_s = 4
heartbeat_s = 1
poll_s = 0.2
retry_base_s = 0.5
drain_timeout_s = 60
[caches]
{f'weights_root = "{weights}"' if weights else ""}
{extra}
""")
    return path


def add_tenant(config: Path, name: str, *options: str) -> dict:
    result = subprocess.run(CLI + ["gateway", "add-tenant", name, "--config", str(config), "--json", *options],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@dataclass
class Gateway:
    config: Path
    process: GatewayProcess
    tenants: dict[str, dict]

    @property
    def url(self) -> str:
        return self.process.url

    def headers(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tenants[tenant]['api_key']}"}


class TritonClientStandIn:
    """What the gateway worker uses of TalkingHeadClient besides `generate`: stand-ins subclass it and stream."""

    def __init__(self, endpoint, timeout_s=0.0):
        self._client = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def close(self):
        pass

    def is_ready(self):
        return True
