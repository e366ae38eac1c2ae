"""What the gateway shows others: its access log (no secrets) and what tenants read (no server paths)."""

from __future__ import annotations

import logging

from client.gateway.serve import RedactedAccessLog, redact_target
from client.gateway.views import without_paths


def test_access_log_keeps_query_names_and_drops_values_and_keys():
    assert redact_target("/v1/videos/vid_1?api_key=thk_abc123&x=1&flag") == \
        "/v1/videos/vid_1?api_key=[redacted]&x=[redacted]&flag"
    assert redact_target("/v1/videos/thk_Secret-Key_9") == "/v1/videos/thk_[redacted]"
    assert redact_target("/healthz") == "/healthz"
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("1.2.3.4:5", "GET", "/v1/videos/x?token=s3cret", "1.1", 200), None)
    assert RedactedAccessLog().filter(record) and "s3cret" not in record.getMessage()


def test_server_paths_become_names_and_everything_else_stays():
    report = {
        "models": {"face_embedder": {"path": "/srv/venv/lib/site-packages/models/dlib_resnet.dat",
                                     "note": "put /models/weights/face/Resnet50_Final.pth or mobilenet.pth there"}},
        "audit": {"log": "/var/lib/talkinghead-gateway/audit.log", "seq": 3},
        "error": "[Errno 28] No space left on device: '/var/lib/g/staging/jobs/vid_1/video.mp4'",
        "kept": ["http://cv.iptc.org/newscodes/digitalsourcetype/algorithmicMedia", "(EU) 2024/1689", "a / b",
                 "put it at <weights root>/mouth_refiner/", "/healthz", 7, None],
        "parameters": {"prompt": "a man at /home/bob/desk"},  # what the tenant sent comes back as sent
    }
    assert without_paths(report) == {
        "models": {"face_embedder": {"path": "dlib_resnet.dat",
                                     "note": "put Resnet50_Final.pth or mobilenet.pth there"}},
        "audit": {"log": "audit.log", "seq": 3},
        "error": "[Errno 28] No space left on device: 'video.mp4'",
        "kept": report["kept"],
        "parameters": report["parameters"],
    }
