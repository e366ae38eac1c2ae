"""The streaming upload parser (per-file cap before the rest is read) and the gateway's settings file."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from client.gateway.settings import Limits, SettingsError, load_settings
from client.gateway.uploads import UploadInvalid, UploadTooLarge, parse_upload

BOUNDARY = "----talkinghead"


def _part(name: str, data: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"


def _body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


class _Stream:
    """The request body in 64 KiB pieces, counting how much was read."""

    def __init__(self, body: bytes) -> None:
        self.body, self.read = body, 0

    async def __aiter__(self):
        for start in range(0, len(self.body), 65536):
            self.read += min(65536, len(self.body) - start)
            yield self.body[start:start + 65536]


SMALL = Limits(max_upload_bytes=1_000_000)


def _parse(body: bytes, tmp_path, limits: Limits = SMALL):
    stream = _Stream(body)
    upload = asyncio.run(parse_upload(f"multipart/form-data; boundary={BOUNDARY}", stream, tmp_path / "u", limits))
    return upload, stream


def test_files_are_hashed_and_fields_kept(tmp_path):
    photo, audio = b"\x89PNG" + bytes(range(256)) * 100, b"RIFF" * 1000
    upload, _ = _parse(_body(_part("photo", photo, "face.png"), _part("audio", audio, "s.wav"),
                             _part("parameters", b'{"fps": 10}')), tmp_path)
    assert upload.files["photo"].sha256 == hashlib.sha256(photo).hexdigest()
    assert upload.files["photo"].path.read_bytes() == photo and upload.files["photo"].filename == "face.png"
    assert upload.files["audio"].bytes == len(audio)
    assert upload.fields == {"parameters": '{"fps": 10}'}


def test_a_file_over_the_limit_stops_reading(tmp_path):
    body = _body(_part("photo", b"x" * 5_000_000, "big.png"), _part("audio", b"y", "s.wav"))
    with pytest.raises(UploadTooLarge, match=r"photo is larger than the limit of 1.0 MiB per file") as caught:
        _parse(body, tmp_path)
    assert caught.value.field == "photo"


def test_read_stops_early(tmp_path):
    stream = _Stream(_body(_part("photo", b"x" * 5_000_000, "big.png")))

    async def run():
        await parse_upload(f"multipart/form-data; boundary={BOUNDARY}", stream, tmp_path / "u",
                           Limits(max_upload_bytes=1_000_000))

    with pytest.raises(UploadTooLarge):
        asyncio.run(run())
    assert stream.read < 1_200_000  # the remaining ~4 MB were never read


@pytest.mark.parametrize("body, message", [
    (_body(_part("photo", b"x")), "must be sent as a file upload"),
    (_body(_part("avatar", b"x", "a.png")), "unknown form field 'avatar'"),
    (_body(_part("photo", b"x", "a.png"), _part("photo", b"y", "b.png")), "sent twice"),
    (_body(_part("parameters", b"\xff\xfe")), "not UTF-8"),
])
def test_malformed_forms_are_explained(tmp_path, body, message):
    with pytest.raises(UploadInvalid, match=message):
        _parse(body, tmp_path)


def test_not_multipart(tmp_path):
    async def run():
        await parse_upload("application/json", _Stream(b"{}"), tmp_path / "u", Limits())

    with pytest.raises(UploadInvalid, match="multipart/form-data"):
        asyncio.run(run())


def test_settings_from_toml_env_and_overrides(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text('data_dir = "/srv/th"\nworkers = 3\n[limits]\nmax_upload_bytes = 1000\n'
                      '[webhooks]\nallow = ["10.0.0.0/8", "hooks.internal"]\n[storage]\nkind = "s3"\nbucket = "b"\n')
    settings = load_settings(config, env={"TALKINGHEAD_GATEWAY_TRITON_URL": "triton:8001"}, workers=4)
    assert str(settings.data_dir) == "/srv/th" and settings.workers == 4 and settings.triton_url == "triton:8001"
    assert settings.limits.max_upload_bytes == 1000 and settings.storage.bucket == "b"
    networks, hosts = settings.webhooks.allowed_networks()
    assert [str(n) for n in networks] == ["10.0.0.0/8"] and hosts == {"hooks.internal"}
    assert settings.database.startswith("sqlite:///") and settings.database.endswith("/srv/th/gateway.db")


def test_trusted_proxies_default_to_none_and_come_from_the_file_or_the_environment(tmp_path):
    assert load_settings(None, env={}).http.trusted_proxies == ()
    config = tmp_path / "gateway.toml"
    config.write_text('[http]\ntrusted_proxies = ["10.0.0.0/8"]\nheader_timeout_s = 5\n')
    assert load_settings(config, env={}).http.trusted_proxies == ("10.0.0.0/8",)
    from_env = load_settings(config, env={"TALKINGHEAD_GATEWAY_TRUSTED_PROXIES": "192.0.2.1, 2001:db8::/32"}).http
    assert from_env.trusted_proxies == ("192.0.2.1", "2001:db8::/32") and from_env.header_timeout_s == 5


@pytest.mark.parametrize("text, message", [
    ("wrokers = 2", "unknown setting wrokers"),
    ("[limits]\nmax_upload_bytes = 'lots'", "limits.max_upload_bytes: expected int"),
    ("[storage]\nkind = 'ftp'", "storage.kind must be 'local' or 's3'"),
    ("lease_s = 4\nheartbeat_s = 3", "heartbeat_s .* at most half of lease_s"),
    ("[webhooks]\nunknown = 1", "unknown setting webhooks.unknown"),
    ("data_dir = ", "not valid TOML"),
    ("[http]\ntrusted_proxies = ['*']", "http.trusted_proxies: '\\*' is not an IP address or network"),
    ("[http]\nheader_timeout_s = 0", "http.header_timeout_s must be a positive number"),
    ("[http]\nmin_body_bytes_per_s = nan", "http.min_body_bytes_per_s must be a positive number"),
    ("[tenant_defaults]\nconcurrent_jobs = 0", "concurrent_jobs .* at least 1"),
    ("[tenant_defaults]\nrate_per_s = -1.0", "rate_per_s .* positive"),
    ("[webhooks]\nper_tenant = 0", "per_tenant .* at least 1"),
    ("[limits]\nmax_queued_jobs = 0", "max_queued_jobs .* at least 1"),
])
def test_bad_settings_name_the_key(tmp_path, text, message):
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=message):
        load_settings(config, env={})
