"""The Triton series the autoscaler reads (deploy/kubernetes/monitoring) exist on the real server, with the
model labels the adapter rules filter on."""

from __future__ import annotations

import re
import urllib.request

import pytest

from client.server import PROJECT_ROOT

pytestmark = pytest.mark.integration
RULES = PROJECT_ROOT / "deploy" / "kubernetes" / "monitoring" / "prometheus-adapter-rules.yaml"


def test_metrics_endpoint_has_every_series_the_adapter_rules_read(triton_server):
    yaml = pytest.importorskip("yaml")
    rules = yaml.safe_load(yaml.safe_load(RULES.read_text())["data"]["config.yaml"])["rules"]
    queries = " ".join(rule["seriesQuery"] + " " + rule["metricsQuery"] for rule in rules)
    series = set(re.findall(r"\bnv_[a-z_]+", queries))
    assert series  # the rules read Triton's nv_* series
    with urllib.request.urlopen(triton_server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    for name in sorted(series):
        models = set(re.findall(rf'^{name}{{[^}}]*model="([^"]+)"', text, re.M))
        assert {"talking_head", "video_generator"} <= models, f"{name}: models {sorted(models)}"
