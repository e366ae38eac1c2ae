"""Object storage: the local folder, and S3 against moto's S3 server on loopback (a real HTTP S3 endpoint)."""

from __future__ import annotations

import pytest

from client.gateway.storage import LocalStorage, S3Storage, StorageError, job_key
from client.server import free_port


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path, monkeypatch):
    if request.param == "local":
        return LocalStorage(tmp_path / "objects")
    endpoint = request.getfixturevalue("s3_endpoint")
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    import boto3

    bucket = f"b{tmp_path.name.replace('_', '-').lower()[-40:]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return S3Storage(bucket, prefix="gw", endpoint_url=endpoint, region="us-east-1")


def test_put_get_stream_size_delete(storage, tmp_path):
    key = job_key("ten_a", "vid_1", "video.mp4")
    source = tmp_path / "in.bin"
    source.write_bytes(b"x" * 3_000_001)
    storage.put_file(key, source, "video/mp4")
    storage.put_bytes(job_key("ten_a", "vid_1", "report.json"), b"{}", "application/json")
    storage.put_bytes(job_key("ten_b", "vid_2", "photo"), b"b")
    assert storage.size(key) == 3_000_001
    assert b"".join(storage.iter_chunks(key, 1 << 20)) == source.read_bytes()
    assert storage.get_bytes(job_key("ten_a", "vid_1", "report.json")) == b"{}"
    storage.delete_prefix("tenants/ten_a/jobs/vid_1")
    assert storage.size(key) is None
    with pytest.raises(StorageError, match="missing"):
        storage.get_bytes(key)
    assert storage.get_bytes(job_key("ten_b", "vid_2", "photo")) == b"b"  # other tenants untouched


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a//b", "tenants/../x", ""])
def test_keys_cannot_escape(tmp_path, key):
    with pytest.raises(StorageError, match="invalid object key"):
        LocalStorage(tmp_path).put_bytes(key, b"x")


def test_local_writes_are_atomic(tmp_path):
    storage = LocalStorage(tmp_path)
    key = job_key("ten_a", "vid_1", "photo")
    storage.put_bytes(key, b"first")
    storage.put_bytes(key, b"second")
    assert storage.get_bytes(key) == b"second"
    assert [p.name for p in (tmp_path / "tenants/ten_a/jobs/vid_1").iterdir()] == ["photo"]  # no temp leftovers
    assert storage.local_path(key) == tmp_path.resolve() / key
