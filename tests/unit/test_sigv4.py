"""The direct path's signatures are botocore's: the same requests signed both ways
carry the same headers, byte for byte."""

from __future__ import annotations

import datetime
import time

import pytest
from botocore import auth as botocore_auth
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from mediadrive.core.blob.sigv4 import UNSIGNED_PAYLOAD, Signer, host_of, payload_hash

NOW = datetime.datetime(2026, 12, 6, 17, 4, 5)
REQUESTS = [
    # An fsync's PUT from the event loop: Host given, its CRC32C carried, unsigned.
    (
        "PUT",
        "http://127.0.0.1:9000/bucket/drive/chunks/ab/abcdef",
        {"Host": "127.0.0.1:9000", "Content-Length": "5", "x-amz-checksum-crc32c": "AAAAAA=="},
        b"hello",
        False,
    ),
    # A ranged GET from a thread: Host from the URL, a key that needed quoting.
    (
        "GET",
        "https://bucket.s3.eu-west-1.amazonaws.com/my%20drive/chunks/x~y",
        {"Range": "bytes=0-1048575"},
        None,
        True,
    ),
    # A part of a multipart upload: query pairs out of order, a value with spaces.
    (
        "PUT",
        "http://minio.local:80/bucket/streams/u?uploadId=abc&partNumber=2",
        {"Content-Length": "3", "X-Custom": "  two   words  "},
        b"abc",
        True,
    ),
    # Over IPv6, on a port of its own, with a header botocore leaves unsigned.
    (
        "HEAD",
        "https://[::1]:9443/bucket/k",
        {"User-Agent": "mediadrive", "Expect": "x"},
        None,
        True,
    ),
]


@pytest.mark.parametrize("token", [None, "session-token"])
@pytest.mark.parametrize(("method", "url", "headers", "body", "sign_body"), REQUESTS)
def test_headers_are_the_ones_botocore_signs(
    monkeypatch: pytest.MonkeyPatch,
    token: str | None,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    sign_body: bool,
) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    monkeypatch.setattr(botocore_auth, "get_current_datetime", lambda *_, **__: NOW)
    expected = AWSRequest(method, url, dict(headers), body)
    expected.context["client_config"] = Config(s3={"payload_signing_enabled": sign_body})
    S3SigV4Auth(credentials.get_frozen_credentials(), "s3", "eu-west-1").add_auth(expected)

    payload = payload_hash(body) if sign_body else UNSIGNED_PAYLOAD
    now = NOW.replace(tzinfo=datetime.UTC).timestamp()
    signed = Signer("eu-west-1").sign(
        credentials.get_frozen_credentials(), method, url, dict(headers), payload, now
    )
    assert {k.lower(): v for k, v in signed.items()} == {
        k.lower(): v for k, v in expected.headers.items()
    }


def test_the_signing_key_is_worked_out_once_a_day() -> None:
    signer = Signer("us-east-1")
    credentials = Credentials("id", "secret").get_frozen_credentials()
    url = "http://127.0.0.1:9000/b/k"
    day = time.mktime((2026, 12, 6, 10, 0, 0, 0, 0, 0))
    first = signer.sign(credentials, "GET", url, {}, UNSIGNED_PAYLOAD, day)
    key = signer._key
    signer.sign(credentials, "GET", url, {}, UNSIGNED_PAYLOAD, day + 60)
    assert signer._key is key
    later = signer.sign(credentials, "GET", url, {}, UNSIGNED_PAYLOAD, day + 86_400)
    assert signer._key is not key
    assert first["Authorization"] != later["Authorization"]


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://127.0.0.1:9000/takes/a", "127.0.0.1:9000"),
        ("http://minio.local:80/takes/a", "minio.local"),
        ("https://takes.s3.eu-west-1.amazonaws.com/a", "takes.s3.eu-west-1.amazonaws.com"),
        ("https://[::1]:443/takes/a", "[::1]"),
        ("https://[::1]:9443/takes/a", "[::1]:9443"),
        ("http://MinIO.Local:9000/takes/a", "minio.local:9000"),
    ],
)
def test_the_host_a_request_signs_and_sends(url: str, host: str) -> None:
    assert host_of(url) == host
    assert host_of(url) == botocore_auth._host_from_url(url)  # type: ignore[attr-defined]
