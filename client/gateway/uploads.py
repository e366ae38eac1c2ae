"""Streaming multipart parsing with a size cap per file, hashing each file as it arrives.

Starlette's form parser spools every file whole before the route sees it and caps only non-file fields. Here each
part goes straight to a file in the staging folder with a running SHA-256, and the moment a file passes
`max_upload_bytes` (or the fields pass `max_fields_bytes`) parsing stops with `UploadTooLarge`, naming the field
and the limit: the rest of the body is never read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

from .settings import Limits

FILE_FIELDS = ("photo", "audio", "driving_video")
TEXT_FIELDS = ("parameters", "webhook_url")


class UploadTooLarge(Exception):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class UploadInvalid(Exception):
    """The body is not usable multipart form data; the message says what is wrong."""


@dataclass
class UploadedFile:
    path: Path
    filename: str
    content_type: str
    bytes: int = 0
    sha256: str = ""


@dataclass
class Upload:
    files: dict[str, UploadedFile] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)


def megabytes(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class _Parser:
    def __init__(self, folder: Path, limits: Limits) -> None:
        self.folder, self.limits = folder, limits
        self.upload = Upload()
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._file: UploadedFile | None = None
        self._handle = None
        self._hash = None
        self._text = bytearray()
        self._fields_bytes = 0

    def on_part_begin(self) -> None:
        self._headers, self._text = {}, bytearray()
        self._file = self._handle = self._hash = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise UploadInvalid("every form part needs a Content-Disposition header with a name")
        self._name = options[b"name"].decode("utf-8", "replace")
        if self._name in self.upload.files or self._name in self.upload.fields:
            raise UploadInvalid(f"the form field {self._name!r} was sent twice")
        if self._name in FILE_FIELDS:
            if b"filename" not in options:
                raise UploadInvalid(f"{self._name} must be sent as a file upload (with a filename)")
            path = self.folder / self._name
            self._file = UploadedFile(path, options[b"filename"].decode("utf-8", "replace")[:255],
                                      self._headers.get(b"content-type", b"application/octet-stream").decode(
                                          "latin-1")[:100])
            self._handle = open(path, "wb")
            self._hash = hashlib.sha256()
        elif self._name not in TEXT_FIELDS:
            raise UploadInvalid(f"unknown form field {self._name!r}; send {', '.join(FILE_FIELDS)} as files and "
                                f"{', '.join(TEXT_FIELDS)} as text")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._file is not None:
            self._file.bytes += len(chunk)
            if self._file.bytes > self.limits.max_upload_bytes:
                raise UploadTooLarge(
                    f"{self._name} is larger than the limit of {megabytes(self.limits.max_upload_bytes)} per file "
                    f"(more than {megabytes(self._file.bytes)} received); send a shorter or more compressed file",
                    self._name)
            self._hash.update(chunk)
            self._handle.write(chunk)
        else:
            self._fields_bytes += len(chunk)
            if self._fields_bytes > self.limits.max_fields_bytes:
                raise UploadTooLarge(f"the form's text fields are larger than {self.limits.max_fields_bytes} bytes",
                                     self._name)
            self._text.extend(chunk)

    def on_part_end(self) -> None:
        if self._file is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None
            self._file.sha256 = self._hash.hexdigest()
            self.upload.files[self._name] = self._file
        else:
            try:
                self.upload.fields[self._name] = bytes(self._text).decode("utf-8")
            except UnicodeDecodeError:
                raise UploadInvalid(f"the form field {self._name!r} is not UTF-8 text") from None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


async def parse_upload(content_type: str, stream: AsyncIterator[bytes], folder: Path, limits: Limits) -> Upload:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise UploadInvalid("send the job as multipart/form-data (photo, audio and/or driving_video as files)")
    folder.mkdir(parents=True, exist_ok=True)
    parser = _Parser(folder, limits)
    callbacks = {name: getattr(parser, name) for name in (
        "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value", "on_header_end",
        "on_headers_finished")}
    received = 0
    try:
        multipart = MultipartParser(options[b"boundary"], callbacks)  # a boundary over 256 bytes is a parse error
        async for chunk in stream:
            received += len(chunk)
            if received > limits.max_request_bytes:
                raise UploadTooLarge(f"the request is larger than {megabytes(limits.max_request_bytes)}", "body")
            multipart.write(chunk)
        multipart.finalize()
    except (UploadTooLarge, UploadInvalid):
        raise
    except Exception as exc:  # python_multipart's parse errors
        raise UploadInvalid(f"the body is not valid multipart/form-data ({exc})") from None
    finally:
        parser.close()
    return parser.upload
