"""Where uploads and videos live: a local folder by default, an S3-compatible bucket optionally.

Keys are `tenants/<tenant id>/jobs/<job id>/<name>`: a tenant's objects never share a prefix with another's, and
routes only ever reach a key through a job row looked up with the caller's tenant. Writes are atomic (local:
write to a temporary name, fsync, rename, fsync the folder; S3: a PUT is atomic), so a crash never leaves half an
object under a real key.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from .settings import GatewaySettings


class StorageError(Exception):
    """An object could not be stored or read."""


def job_key(tenant_id: str, job_id: str, name: str) -> str:
    return f"tenants/{tenant_id}/jobs/{job_id}/{name}"


class Storage(Protocol):
    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None: ...

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]: ...

    def local_path(self, key: str) -> Path | None: ...

    def size(self, key: str) -> int | None: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def delete(self, key: str) -> None: ...  # one object; a missing one is no error


def _safe(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise StorageError(f"invalid object key {key!r}")
    return key


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _safe(key)

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        with open(path, "rb") as source:
            self._write(key, lambda out: shutil.copyfileobj(source, out, 1 << 20))

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._write(key, lambda out: out.write(data))

    def _write(self, key: str, fill: Callable[[BinaryIO], object]) -> None:
        """Write a hidden file beside the target, fsync it, then rename it into place: readers never see a part."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                fill(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"object {key} is missing") from None

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with open(self._path(key), "rb") as handle:
            yield from iter(lambda: handle.read(chunk_size), b"")

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix.rstrip("/")), ignore_errors=True)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Storage:
    """Any S3-compatible service through boto3 (credentials from the usual AWS environment / config chain)."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None,
                 client: object | None = None) -> None:
        if client is None:
            try:
                import boto3
            except ImportError:
                raise StorageError("storage.kind = 's3' needs boto3: pip install boto3") from None
            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
        self.client, self.bucket = client, bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def _key(self, key: str) -> str:
        return self.prefix + _safe(key)

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key), ExtraArgs={"ContentType": content_type})

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise StorageError(f"object {key} is missing") from None

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def local_path(self, key: str) -> Path | None:
        return None

    def size(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except Exception:  # botocore's ClientError for 404; anything else reads as missing too
            return None

    def delete_prefix(self, prefix: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix.rstrip("/")) + "/"):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


def open_storage(settings: GatewaySettings) -> Storage:
    config = settings.storage
    if config.kind == "s3":
        return S3Storage(config.bucket, config.prefix, config.endpoint_url, config.region)
    return LocalStorage(settings.objects_path)
