"""Chunks in an S3 bucket (AWS or any S3-compatible server), through boto3.

URL: ``s3://BUCKET/PREFIX?endpoint=http(s)://HOST:PORT&region=REGION``; both
options are optional (AWS itself needs no endpoint). Chunks live under
``PREFIX/chunks/ab/abcdef...``.

botocore's ``standard`` retry mode handles throttling and transient errors. A chunk
up to 64 MiB (the default fixed chunk) goes up in one PUT: an upload keeps several
chunks in flight, which is parallel enough, and one PUT costs far less CPU than the
parts of a multipart upload. Larger chunks go up as concurrent multipart uploads
through one boto3 transfer manager shared by the store.

Request bodies are neither SHA-256 signed (``UNSIGNED-PAYLOAD``, what botocore
already does over HTTPS) nor given a checksum header unless the operation requires
one (``request_checksum_calculation="when_required"``; PutObject does not): each
would read every byte once more, on the agent's CPU, while the chunk's bytes are
already named by their BLAKE3 hash, every block is checked against its digest when
it is read, ``mediadrive fsck`` checks stored chunks, and TLS protects the bytes on
the wire.

The two requests a mount waits on most, the PUT of a chunk and the GET of a range,
are first sent as plain signed requests through the client's own HTTP session
(:class:`_Direct`): the client's per-call machinery (parameter validation, endpoint
rules, event hooks, response parsing) costs more CPU than the signing and sending
together, and an fsync or a read waits for it. Anything but a plain success is asked
again through the client, whose retries and errors then apply. A PUT of up to 4 MiB
(what an fsync sends ahead, a small file's chunk) goes out from the event loop itself
over a kept connection of its own (:class:`_LoopConnections`), signed the same way:
handing it to a thread and back took about as long as signing and sending it.

A chunk streamed while it is written (see ``ChunkStream``) goes up as a multipart
upload to ``PREFIX/streams/UUID``, parts sent as the writer fills them (a mount
sends halves of a chunk, 8 MiB at least): when
its last byte is written only the last part, the completion and a small object at the
chunk's key are left to send, where a PUT of the whole chunk would start only then.
That small object (its body and its ``x-amz-meta-mediadrive-stream`` header name the
stream object) redirects reads of the chunk, once per chunk per process (remembered);
deleting the chunk deletes both. S3 has no rename: a server-side copy to the chunk's
key would cost the server as much as the PUT it replaces. A stream whose upload never
completed, or which completed with no chunk pointing at it (a crash between the two
steps, or two writers of the same chunk at once), is debris that GC sweeps.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import io
import logging
import os
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPResponse
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import boto3
import crc32c
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.httpsession import get_cert_path
from urllib3.exceptions import HTTPError

from .. import buffers
from ..errors import ConfigError, NotFound, StoreUnavailable
from . import PART_ALIGN, BlobStore, ChunkStream, put_sent, register
from .sigv4 import UNSIGNED_PAYLOAD, Signer, host_of, payload_hash

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from s3transfer.manager import TransferManager

T = TypeVar("T")
log = logging.getLogger(__name__)
_MISSING = {"NoSuchKey", "404", "NotFound"}
# Chunks larger than S3BlobStore.single_put_max go up in parts of this size.
_PART_SIZE = 16 << 20
# Parts in flight at once across all of the store's multipart uploads.
_PART_CONCURRENCY = 16
_OPTIONS = {"endpoint", "region"}
# Answers to a direct request that the next one would get too (see _Direct).
_WRONG_HERE = {301, 307, 400, 403, 405, 501}
# Bodies up to this size are put from the event loop (see _Direct.put_on_loop).
_LOOP_PUT_MAX = 4 << 20
# The smallest part of a streamed chunk a writer sends as it fills: the smaller, the
# less is left to send once the chunk's last byte is written, but each part is a
# request (see ``EarlyUploads`` for what mounts ask for).
_STREAM_PART = 8 << 20
# S3 takes parts of 5 MiB at least (but the last).
_S3_MIN_PART = 5 << 20
# The user metadata on a chunk's key that names the stream object holding its bytes.
_STREAM_META = "mediadrive-stream"
_STREAM_HEADER = f"x-amz-meta-{_STREAM_META}"
# Streams are debris only after this long at least: a stream stays open as long as its
# chunk is being written, and S3 dates a multipart upload from its start.
_STREAM_DEBRIS_AGE = 24 * 3600.0
# Chunk ids whose stream object is remembered (see S3BlobStore._streamed).
_STREAMED_KEPT = 1 << 16


class _Moved(Exception):
    """A chunk's key holds a redirect to the stream object with its bytes."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


# What a direct ranged GET answers for a range past the end of a chunk.
_PAST_END = object()


def _moved_to(headers: Any) -> str | None:
    """The stream object a chunk's answer redirects to, if it does."""
    target = headers.get(_STREAM_HEADER)
    return str(target) if target else None


@dataclass(frozen=True)
class S3Location:
    """Where an ``s3://`` store URL points."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """The location in ``url``; ConfigError naming the URL if it is unusable."""
        parts = urlsplit(url)
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        unknown = set(query) - _OPTIONS
        if unknown:
            raise ConfigError(
                f"store URL {url!r} has unknown option(s): {', '.join(sorted(unknown))}"
            )
        if parts.scheme != "s3":
            raise ConfigError(f"store URL {url!r} must start with s3://")
        if not parts.netloc:
            raise ConfigError(f"store URL {url!r} names no bucket: use s3://BUCKET/PREFIX")
        endpoint = query.get("endpoint")
        if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
            raise ConfigError(f"store URL {url!r}: endpoint must be an http:// or https:// URL")
        return cls(
            bucket=parts.netloc,
            prefix=parts.path.strip("/"),
            endpoint=endpoint,
            region=query.get("region"),
        )


def check_s3_url(url: str) -> None:
    S3Location.parse(url)


@dataclass(frozen=True)
class _Signed:
    """A request of the direct path, signed: its URL and every header it carries."""

    url: str
    headers: dict[str, str]


def body_checksum(body: bytes | memoryview) -> str:
    """``x-amz-checksum-crc32c`` of ``body``: its CRC32C, big-endian, in base64."""
    return base64.b64encode(crc32c.crc32c(body).to_bytes(4, "big")).decode()


class _Direct:
    """Signed PUT and ranged GET requests sent without the client's per-call
    machinery. Each answers None for anything but the plain success (an error status,
    a dropped connection, credentials that cannot be had): the caller then asks the
    client, which retries and explains. An answer that says the requests themselves
    are wrong here (a redirect to another region, a refused signature, a method the
    server lacks) turns the direct path off for good: the client, which follows
    redirects and learns a bucket's region, then sends everything."""

    def __init__(
        self, client: S3Client, session: boto3.session.Session, base: str, region: str
    ) -> None:
        self._base = base
        self._region = region
        self._config = client.meta.config
        self._session = session
        # The client's own HTTP session: the same connections, proxies, timeouts and
        # certificate checks as every other request of the store.
        self._http = client._endpoint.http_session  # type: ignore[attr-defined]
        self._signer = Signer(region)
        # Bodies go unsigned where the client's configuration says so (as the client's
        # own requests then do); otherwise botocore's S3 signer signs them.
        s3_config = getattr(self._config, "s3", None) or {}
        self._sign_bodies = s3_config.get("payload_signing_enabled") is not False
        self.off = False
        # Puts from the event loop: not through a proxy or with a client certificate,
        # which only the client's session knows how to use.
        self.on_loop = (
            self._http._proxy_config.proxy_url_for(base) is None and self._http._cert_file is None
        )
        self._loop_connections: _LoopConnections | None = None

    @classmethod
    def for_client(
        cls, client: S3Client, session: boto3.session.Session, bucket: str, region: str
    ) -> _Direct | None:
        """The direct path to ``bucket``, or None where its URL is not plain to work
        out (AWS buckets whose names need path-style addressing)."""
        if not hasattr(client, "_endpoint"):
            return None
        endpoint = client.meta.endpoint_url.rstrip("/")
        style = (getattr(client.meta.config, "s3", None) or {}).get("addressing_style")
        if style == "path":
            return cls(client, session, f"{endpoint}/{quote(bucket)}/", region)
        if "." in bucket or bucket != bucket.lower() or not endpoint.startswith("https://"):
            return None
        host = urlsplit(endpoint).netloc
        return cls(client, session, f"https://{bucket}.{host}/", region)

    def _send(
        self,
        method: str,
        key: str,
        body: bytes | memoryview | None,
        headers: dict[str, str],
        sent: Callable[[], None] | None = None,
        query: str = "",
        checksum: bool = False,
    ) -> Any:
        signed = self._signed(method, key, headers, body, query=query, checksum=checksum)
        if signed is None:
            return None
        # Streamed: a body read whole in one call (AWSResponse.content reads it in 64 KiB
        # pieces and joins them).
        request = AWSRequest(method, signed.url, signed.headers, body, stream_output=True)
        try:
            prepared = request.prepare()
            if sent is not None and body:
                # urllib3 sends an iterable body piece by piece.
                prepared.body = _then(body, sent)  # type: ignore[assignment]
            answer = self._http.send(prepared)
        except BotoCoreError:
            return None
        self._judge(method, answer.status_code)
        return answer

    def _signed(
        self,
        method: str,
        key: str,
        headers: dict[str, str],
        body: bytes | memoryview | None,
        on_loop: bool = False,
        query: str = "",
        checksum: bool = False,
    ) -> _Signed | None:
        """A request signed with the session's credentials; None when there are none,
        the direct path is off, or (``on_loop``) they must be refreshed first, which may
        ask a server: not on the event loop. ``checksum``: the body goes with its CRC32C
        in ``x-amz-checksum-crc32c``, which S3 and MinIO check before they store it (a
        mismatch is refused), and unsigned: a signed body costs a SHA-256 of it here
        and another in the server, about 0.6 ms a MiB each on the path of every
        fsync'd edit, where a CRC32C takes 0.04 ms a MiB (in hardware)."""
        credentials = self._session.get_credentials()
        if credentials is None or self.off:
            return None
        if on_loop and getattr(credentials, "refresh_needed", lambda: False)():
            return None
        url = self._base + quote(key, safe="/~") + (f"?{query}" if query else "")
        if checksum and body is not None:
            headers = {**headers, "x-amz-checksum-crc32c": body_checksum(body)}
            payload = UNSIGNED_PAYLOAD
        else:
            payload = payload_hash(body) if self._sign_bodies else UNSIGNED_PAYLOAD
        try:
            frozen = credentials.get_frozen_credentials()
        except BotoCoreError:
            return None
        return _Signed(url, self._signer.sign(frozen, method, url, headers, payload))

    def _judge(self, method: str, status: int | None) -> None:
        """Turn the direct path off for an answer that the next request would get too."""
        if status in _WRONG_HERE and not self.off:
            self.off = True
            log.warning(
                "S3 endpoint answered a direct %s with HTTP %d; requests go through boto3's "
                "client from now on",
                method,
                status,
            )

    async def put_on_loop(
        self, key: str, body: bytes | memoryview, sent: Callable[[], None] | None = None
    ) -> bool | None:
        """:meth:`put` from the event loop: True once stored, False when the request
        failed (ask the client), None when it was not sent (credentials to refresh first,
        or the direct path is off: take the usual way)."""
        if not self.on_loop:
            return None
        # Every header sent is signed, Host included.
        headers = {"Host": host_of(self._base), "Content-Length": str(len(body))}
        request = self._signed("PUT", key, headers, body, on_loop=True, checksum=True)
        if request is None:
            return None
        status = await self._exchange_on_loop(request, body, sent)
        self._judge("PUT", status)
        return status == 200

    async def _exchange_on_loop(
        self, request: _Signed, body: bytes | memoryview, sent: Callable[[], None] | None
    ) -> int | None:
        """Send one signed PUT over a kept connection of the loop's own: the status
        answered, None if no answer came."""
        loop = asyncio.get_running_loop()
        connections = self._loop_connections
        if connections is None or connections.loop is not loop:
            connections = self._loop_connections = _LoopConnections(
                loop,
                self._base,
                self._http._verify,
                connect_timeout=getattr(self._config, "connect_timeout", 60),
                read_timeout=getattr(self._config, "read_timeout", 60),
            )
        return await connections.put(request, body, sent)

    async def close(self) -> None:
        """Close the loop's connections, if they belong to the running loop."""
        connections, self._loop_connections = self._loop_connections, None
        if connections is not None and connections.loop is asyncio.get_running_loop():
            connections.close()

    def put(
        self,
        key: str,
        body: bytes | memoryview,
        sent: Callable[[], None] | None = None,
        headers: dict[str, str] | None = None,
    ) -> bool:
        """True once ``body`` is stored under ``key``."""
        headers = {"Content-Length": str(len(body)), **(headers or {})}
        answer = self._send("PUT", key, body, headers, sent, checksum=True)
        return answer is not None and _body(answer) is not None and answer.status_code == 200

    def put_part(
        self, key: str, upload_id: str, number: int, body: bytes | memoryview
    ) -> str | None:
        """Part ``number`` of a multipart upload: its ETag once stored."""
        query = f"partNumber={number}&uploadId={quote(upload_id, safe='')}"
        answer = self._send("PUT", key, body, {"Content-Length": str(len(body))}, query=query)
        if answer is None or _body(answer) is None or answer.status_code != 200:
            return None
        etag = answer.headers.get("ETag")
        return str(etag) if etag else None

    def _get(self, key: str, offset: int, length: int) -> Any:
        """A ranged GET's answer (None if not sent, ``_PAST_END`` for a range past the
        object's end); _Moved for a chunk's redirect."""
        answer = self._send("GET", key, None, {"Range": f"bytes={offset}-{offset + length - 1}"})
        if answer is None:
            return None
        if answer.status_code in (200, 206):
            target = _moved_to(answer.headers)
            if target is not None:
                _body(answer)
                raise _Moved(target)
        elif answer.status_code == 416:
            # Past the end of the object: a chunk's, or (most reads of a streamed
            # chunk, whose redirect is short) its redirect's. The refusal carries no
            # metadata; a HEAD does.
            _body(answer)
            head = self._send("HEAD", key, None, {})
            if head is None or head.status_code != 200:
                return None
            _body(head)
            target = _moved_to(head.headers)
            if target is not None:
                raise _Moved(target)
            return _PAST_END
        return answer

    def get_range(self, key: str, offset: int, length: int) -> bytes | None:
        """``length`` bytes of ``key`` from ``offset`` (fewer at its end)."""
        answer = self._get(key, offset, length)
        if answer is _PAST_END:
            return b""
        return None if answer is None else _range_body(answer, offset, length)

    def get_range_into_aligned(self, key: str, offset: int, length: int) -> memoryview | None:
        """:meth:`get_range`, received straight into page-aligned memory (see
        ``buffers.py``): the body is read from the connection into it, with no copy of
        its own in between."""
        answer = self._get(key, offset, length)
        if answer is None:
            return None
        if answer is _PAST_END:
            return memoryview(b"")
        # The standard library's response under urllib3's: it reads into a buffer given.
        inner = getattr(answer.raw, "_fp", None)
        size = answer.headers.get("Content-Length", "")
        if answer.status_code != 206 or not isinstance(inner, HTTPResponse) or not size.isdigit():
            data = _range_body(answer, offset, length)
            return None if data is None else memoryview(data)
        view = buffers.aligned(int(size))
        got = 0
        try:
            while got < len(view):
                n = inner.readinto(view[got:])
                if not n:
                    break
                got += n
        except (HTTPError, OSError):
            got = -1
        if got != len(view):
            answer.raw.close()
            return None
        # Read to its end: the connection goes back to the pool, as urllib3's own read
        # would send it.
        answer.raw.release_conn()
        return view


class _LoopConnections:
    """Signed PUTs over kept HTTP/1.1 connections of the event loop's own.

    A PUT an fsync waits for is the one request of the edit's path; through aiohttp
    its machinery took about 0.4 ms of CPU and 0.5 ms of latency per request more than
    writing the request line, the signed headers and the body and reading the answer.
    Only what this path needs is here: a request whose headers are all signed, an
    answer of which only the status counts (its body, if any, read and dropped), a
    connection kept only after an answer with a known length and no ``Connection:
    close``. Anything unexpected closes the connection and answers None: the caller
    then asks the client, which retries and explains."""

    # Connections kept idle at most (an fsync puts one piece; a few fsyncs at once).
    KEEP = 4

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        base: str,
        verify: bool | str | None,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self.loop = loop
        parts = urlsplit(base)
        self._host = parts.hostname or ""
        self._tls: ssl.SSLContext | None = None
        if parts.scheme == "https":
            # botocore's verify: True (its bundle), a bundle's path, or False.
            bundle = get_cert_path(verify) if verify else None  # type: ignore[arg-type]
            self._tls = ssl.create_default_context(cafile=bundle)
            if not verify:
                self._tls.check_hostname = False
                self._tls.verify_mode = ssl.CERT_NONE
        self._port = parts.port or (443 if self._tls is not None else 80)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def put(
        self, request: _Signed, body: bytes | memoryview, sent: Callable[[], None] | None
    ) -> int | None:
        url = urlsplit(request.url)
        target = url.path + (f"?{url.query}" if url.query else "")
        head = "".join(
            [f"PUT {target} HTTP/1.1\r\n"]
            + [f"{name}: {value}\r\n" for name, value in request.headers.items()]
            + ["\r\n"]
        ).encode("latin-1")
        # A kept connection the server has since closed fails before any answer: once
        # more on a new one.
        while True:
            try:
                reader, writer, kept = await self._connection()
            except (OSError, TimeoutError):
                return None
            try:
                # Two writes, not one joined (a copy of the body): the headers go out
                # on their own first.
                writer.write(head)
                writer.write(body)
                await writer.drain()
                if sent is not None:
                    sent()
                    sent = None
                async with asyncio.timeout(self._read_timeout):
                    status, keep = await _answer(reader)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                writer.close()
                if kept and isinstance(exc, (ConnectionError, asyncio.IncompleteReadError)):
                    continue
                return None
            if keep and len(self._idle) < self.KEEP:
                self._idle.append((reader, writer))
            else:
                writer.close()
            return status

    async def _connection(
        self,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """An idle connection (True) or a new one (False)."""
        while self._idle:
            reader, writer = self._idle.pop()
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer, True
            writer.close()
        async with asyncio.timeout(self._connect_timeout):
            reader, writer = await asyncio.open_connection(
                self._host,
                self._port,
                ssl=self._tls,
                server_hostname=self._host if self._tls is not None else None,
            )
        return reader, writer, False

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read an HTTP/1.1 answer: its status, and whether the connection may be kept
    (ValueError for what is not such an answer)."""
    line = await reader.readline()
    if not line:
        raise asyncio.IncompleteReadError(line, None)
    version, status, *_ = line.decode("latin-1").split(" ", 2)
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1 answer: {line[:40]!r}")
    length: int | None = None
    keep = version == "HTTP/1.1"
    while (line := await reader.readline()) not in (b"\r\n", b"\n"):
        if not line:
            raise asyncio.IncompleteReadError(line, None)
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() in ("close", "keep-alive"):
            keep = value.strip().lower() == "keep-alive"
        elif name == "transfer-encoding":
            # Not read here: the connection goes with its answer.
            keep = False
    if length is not None:
        await reader.readexactly(length)
    return int(status), keep and length is not None


def _then(body: bytes | memoryview, sent: Callable[[], None]) -> Iterator[bytes | memoryview]:
    """``body`` as the one piece of a request's body, calling ``sent`` once it is
    written (when the connection asks for the next piece)."""
    yield body
    sent()


def _range_body(answer: Any, offset: int, length: int) -> bytes | None:
    """The bytes a ranged GET's answer carries, read whole; None unless it succeeded."""
    data = _body(answer)
    if data is None or answer.status_code not in (200, 206):
        return None
    if answer.status_code == 200:
        # A server that ignores ranges sends the whole object.
        data = data[offset : offset + length]
    return data


def _body(answer: Any) -> bytes | None:
    """The whole body of a streamed answer (read to its end, so its connection goes
    back to the pool); None if the connection failed meanwhile."""
    try:
        data: bytes = answer.raw.read()
    except (HTTPError, OSError):
        return None
    return data


def _fan_out(start: str) -> str:
    """The key suffix under ``chunks/`` where ids beginning with ``start`` sort."""
    return f"{start[:2]}/{start}" if len(start) >= 2 else start


class _S3Stream(ChunkStream):
    """A chunk streamed into a multipart upload (see module doc)."""

    def __init__(self, store: S3BlobStore, part_size: int) -> None:
        self._store = store
        self.part_size = max(part_size, _STREAM_PART)
        self.min_part = _S3_MIN_PART
        self.key = f"{store.prefix}streams/{uuid.uuid4().hex}"
        self._upload: asyncio.Future[str] | None = None
        # By part number: its ETag and length.
        self._parts: dict[int, tuple[str, int]] = {}

    async def _upload_id(self) -> str:
        if self._upload is None:
            store = self._store

            def create() -> str:
                answer = store._client.create_multipart_upload(Bucket=store.bucket, Key=self.key)
                return answer["UploadId"]

            self._upload = asyncio.ensure_future(store._call(create))
        return await asyncio.shield(self._upload)

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        if offset % PART_ALIGN:
            raise ValueError(f"a part starts at a multiple of {PART_ALIGN}, not {offset}")
        store = self._store
        upload_id = await self._upload_id()
        # Numbered by where they start: S3 joins parts in the order of their numbers.
        number = offset // PART_ALIGN + 1

        def put() -> str:
            direct = store._direct
            if direct is not None:
                etag = direct.put_part(self.key, upload_id, number, data)
                if etag is not None:
                    return etag
            answer = store._client.upload_part(
                Bucket=store.bucket,
                Key=self.key,
                UploadId=upload_id,
                PartNumber=number,
                Body=bytes(data),
            )
            return answer["ETag"]

        self._parts[number] = (await store._call(put), len(data))

    async def finish(self, chunk_id: str, size: int) -> None:
        store = self._store
        upload_id = await self._upload_id()
        parts = [{"PartNumber": n, "ETag": self._parts[n][0]} for n in sorted(self._parts)]
        if not self._cover(size):
            await self.abort()
            raise StoreUnavailable(
                f"streamed chunk {chunk_id} has {len(parts)} parts that do not make its "
                f"{size} bytes"
            )
        key = store._key(chunk_id)
        body = self.key.encode()

        def complete() -> None:
            store._client.complete_multipart_upload(
                Bucket=store.bucket,
                Key=self.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            )
            # The redirect after the object it names: a chunk's key never names bytes
            # that are not stored.
            direct = store._direct
            if direct is None or not direct.put(key, body, headers={_STREAM_HEADER: self.key}):
                store._client.put_object(
                    Bucket=store.bucket, Key=key, Body=body, Metadata={_STREAM_META: self.key}
                )

        try:
            await store._call(complete, chunk=chunk_id)
        except BaseException:
            await self.abort()
            raise
        store._remember(chunk_id, self.key)

    def _cover(self, size: int) -> bool:
        """Whether the parts sent, in order, are the bytes from 0 to ``size``."""
        end = 0
        for number in sorted(self._parts):
            if (number - 1) * PART_ALIGN != end:
                return False
            end += self._parts[number][1]
        return end == size

    async def abort(self) -> None:
        store = self._store
        upload = self._upload
        if upload is None or upload.cancelled():
            return
        try:
            # Its start may still be on its way (a part's caller gave up meanwhile).
            upload_id = await asyncio.shield(upload)
        except Exception:
            return

        def abort() -> None:
            with contextlib.suppress(ClientError):
                store._client.abort_multipart_upload(
                    Bucket=store.bucket, Key=self.key, UploadId=upload_id
                )
            # Completed, but its redirect failed.
            store._client.delete_object(Bucket=store.bucket, Key=self.key)

        with contextlib.suppress(StoreUnavailable, NotFound):
            await store._call(abort)


class S3BlobStore(BlobStore):
    # Keys per LIST request; S3's maximum. Tests lower it to see several pages.
    page_size = 1000
    # Chunks up to this size go up in one PUT (tests lower it to see multipart).
    single_put_max = 64 << 20
    # Streams are debris only after this long at least (tests lower it).
    stream_debris_age = _STREAM_DEBRIS_AGE

    def __init__(
        self,
        url: str,
        location: S3Location,
        *,
        create: bool = False,
        concurrency: int = 16,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        """``credentials`` (access key id, secret) replace boto's default chain, for a
        process that serves stores of several owners (the operator)."""
        self.url = url
        self.bucket = location.bucket
        self.prefix = f"{location.prefix}/" if location.prefix else ""
        self.endpoint = location.endpoint
        self._create = create
        region = location.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        key_id, secret = credentials or (None, None)
        session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret)
        self._client: S3Client = session.client(
            "s3",
            endpoint_url=location.endpoint,
            region_name=region,
            config=Config(
                retries={"mode": "standard", "max_attempts": 5},
                max_pool_connections=concurrency * 2,
                connect_timeout=5,
                read_timeout=60,
                request_checksum_calculation="when_required",
                s3={
                    "payload_signing_enabled": False,
                    **({"addressing_style": "path"} if location.endpoint else {}),
                },
            ),
        )
        self._transfer = TransferConfig(
            multipart_threshold=_PART_SIZE,
            multipart_chunksize=_PART_SIZE,
            max_concurrency=_PART_CONCURRENCY,
            use_threads=True,
        )
        self._manager: TransferManager | None = None
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="s3")
        self._direct = _Direct.for_client(self._client, session, self.bucket, region)
        # Streamed chunks: id -> the stream object with their bytes, so a read goes
        # there without asking the chunk's key first (bounded; chunks never change).
        self._streamed: dict[str, str] = {}

    @classmethod
    def from_url(cls, url: str, *, create: bool = False) -> S3BlobStore:
        return cls(url, S3Location.parse(url), create=create)

    def _key(self, chunk_id: str) -> str:
        return f"{self.prefix}chunks/{chunk_id[:2]}/{chunk_id}"

    def _remember(self, chunk_id: str, stream_key: str) -> None:
        if len(self._streamed) >= _STREAMED_KEPT:
            self._streamed.clear()
        self._streamed[chunk_id] = stream_key

    async def _read(self, chunk_id: str, fetch: Callable[[str], T]) -> T:
        """``fetch(key)`` on the store's threads, from the chunk's key or, for a
        streamed chunk, the stream object its key redirects to (see module doc)."""
        key = self._streamed.get(chunk_id) or self._key(chunk_id)
        try:
            return await self._call(fetch, key, chunk=chunk_id)
        except _Moved as moved:
            key = moved.key
        self._remember(chunk_id, key)
        try:
            return await self._call(fetch, key, chunk=chunk_id)
        except _Moved:
            raise StoreUnavailable(
                f"chunk {chunk_id} in {self._where()} redirects to another redirect"
            ) from None

    def stream(self, part_size: int = 0) -> ChunkStream:
        return _S3Stream(self, part_size)

    async def _call(
        self, fn: Callable[..., T], *args: Any, chunk: str | None = None, **kwargs: Any
    ) -> T:
        """``fn`` on the store's threads; ``chunk`` names what a NotFound is about."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                what = f"chunk {chunk}" if chunk else f"object {kwargs.get('Key', '')}".strip()
                raise NotFound(f"{what} is not in {self._where()}") from None
            raise StoreUnavailable(f"S3 store {self._where()} refused: {code or err}") from None
        except BotoCoreError as err:
            raise StoreUnavailable(f"S3 store {self._where()} is unreachable: {err}") from None

    def _where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (
            f" at {self.endpoint}" if self.endpoint else ""
        )

    def _transfers(self) -> TransferManager:
        if self._manager is None:
            self._manager = create_transfer_manager(self._client, self._transfer)
        return self._manager

    @property
    def signals_sent(self) -> bool:
        return True

    async def put(self, chunk_id: str, data: bytes | memoryview) -> None:
        # A view (a chunk gathered as it was written) goes to the socket as it is: a
        # copy of 64 MiB of new memory took up to 50 ms of the event loop, and botocore
        # joins a bytes body to the request's headers, a second copy. Only the client's
        # paths take bytes (``bytes()`` of a bytes object is that object).
        key = self._key(chunk_id)
        sent = put_sent.get()

        def by_client() -> None:
            if sent is not None:
                # The client sends it in one call, which starts now.
                sent()
            self._client.put_object(Bucket=self.bucket, Key=key, Body=bytes(data))

        direct = self._direct
        if direct is not None and len(data) <= _LOOP_PUT_MAX:
            stored = await direct.put_on_loop(key, data, sent)
            if stored:
                return
            if stored is False:
                # Failed: the client, whose retries and errors apply (not the direct
                # path again).
                await self._call(by_client, chunk=chunk_id)
                return
        if len(data) <= self.single_put_max:

            def put() -> None:
                if direct is None or not direct.put(key, data, sent):
                    by_client()

            await self._call(put, chunk=chunk_id)
            return
        if sent is not None:
            sent()
        # BytesIO shares a bytes object instead of copying it.
        manager = self._transfers()
        await self._call(
            lambda: manager.upload(io.BytesIO(bytes(data)), self.bucket, key).result(),
            chunk=chunk_id,
        )

    async def get(self, chunk_id: str) -> bytes:
        def fetch(key: str) -> bytes:
            answer = self._client.get_object(Bucket=self.bucket, Key=key)
            data: bytes = answer["Body"].read()
            target = answer.get("Metadata", {}).get(_STREAM_META)
            if target:
                raise _Moved(target)
            return data

        return await self._read(chunk_id, fetch)

    async def get_range(self, chunk_id: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""

        def fetch(key: str) -> bytes:
            if self._direct is not None:
                data = self._direct.get_range(key, offset, length)
                if data is not None:
                    return data
            return self._client_range(key, offset, length)

        return await self._read(chunk_id, fetch)

    async def get_range_view(self, chunk_id: str, offset: int, length: int) -> memoryview:
        direct = self._direct
        if length <= 0 or direct is None:
            return await super().get_range_view(chunk_id, offset, length)

        def fetch(key: str) -> memoryview:
            view = direct.get_range_into_aligned(key, offset, length)
            return memoryview(self._client_range(key, offset, length)) if view is None else view

        return await self._read(chunk_id, fetch)

    def _client_range(self, key: str, offset: int, length: int) -> bytes:
        """A range through the client (its retries and errors); runs on the store's
        threads. _Moved for a chunk's redirect."""
        try:
            response = self._client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
            )
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") != "InvalidRange":
                raise
            # Past the end of the object: a chunk's, or its redirect's (shorter than
            # the chunk), which only its header tells apart.
            head = self._client.head_object(Bucket=self.bucket, Key=key)
            target = head.get("Metadata", {}).get(_STREAM_META)
            if target:
                raise _Moved(target) from None
            return b""
        data: bytes = response["Body"].read()
        target = response.get("Metadata", {}).get(_STREAM_META)
        if target:
            raise _Moved(target)
        return data

    async def exists(self, chunk_id: str) -> bool:
        try:
            await self._call(
                self._client.head_object,
                Bucket=self.bucket,
                Key=self._key(chunk_id),
                chunk=chunk_id,
            )
        except NotFound:
            return False
        return True

    async def delete(self, chunk_id: str) -> None:
        key = self._key(chunk_id)

        def delete() -> None:
            try:
                head = self._client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as err:
                if str(err.response.get("Error", {}).get("Code", "")) in _MISSING:
                    return
                raise
            # The redirect first: a crash in between leaves debris, not a chunk whose
            # key names bytes that are gone.
            self._client.delete_object(Bucket=self.bucket, Key=key)
            target = head.get("Metadata", {}).get(_STREAM_META)
            if target:
                self._client.delete_object(Bucket=self.bucket, Key=target)

        self._streamed.pop(chunk_id, None)
        await self._call(delete)

    def _stream_debris(self, older_than: float) -> tuple[list[tuple[str, str]], list[str]]:
        """Multipart uploads never completed (key, upload id): of streams, and of
        chunks over single_put_max; and stream objects no chunk names; untouched for
        ``older_than`` seconds; on the store's threads."""
        cutoff = time.time() - max(older_than, self.stream_debris_age)
        root = f"{self.prefix}streams/"
        ours = (root, f"{self.prefix}chunks/")
        uploads = []
        pages = self._client.get_paginator("list_multipart_uploads")
        # The whole bucket's, filtered here: MinIO lists uploads under a prefix only
        # when it is an object's whole key.
        for listed in pages.paginate(Bucket=self.bucket):
            for upload in listed.get("Uploads", []):
                if upload["Key"].startswith(ours) and upload["Initiated"].timestamp() < cutoff:
                    uploads.append((upload["Key"], upload["UploadId"]))
        objects = self._client.get_paginator("list_objects_v2")
        orphans = {
            item["Key"]
            for page in objects.paginate(Bucket=self.bucket, Prefix=root)
            for item in page.get("Contents", [])
            if item["LastModified"].timestamp() < cutoff
        }
        if orphans:
            # A redirect's body is its stream's key, as long as every other's here.
            size = len(f"{root}{uuid.uuid4().hex}".encode())
            for page in objects.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}chunks/"):
                for item in page.get("Contents", []):
                    if item["Size"] != size:
                        continue
                    with contextlib.suppress(ClientError):
                        head = self._client.head_object(Bucket=self.bucket, Key=item["Key"])
                        orphans.discard(head.get("Metadata", {}).get(_STREAM_META, ""))
        return uploads, sorted(orphans)

    async def debris(self, older_than: float) -> builtins.list[str]:
        """Streams that never became a chunk, and chunk uploads never completed."""
        uploads, orphans = await self._call(self._stream_debris, older_than)
        return [f"{key} (unfinished upload)" for key, _ in uploads] + orphans

    async def remove_debris(self, older_than: float) -> int:
        def remove() -> int:
            uploads, orphans = self._stream_debris(older_than)
            for key, upload_id in uploads:
                with contextlib.suppress(ClientError):
                    self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )
            for key in orphans:
                self._client.delete_object(Bucket=self.bucket, Key=key)
            return len(uploads) + len(orphans)

        return await self._call(remove)

    async def list(self, prefix: str = "", after: str = "") -> AsyncIterator[str]:
        # Keys sort as their ids do, since the fan-out folder is the id's first two
        # characters; so Prefix and StartAfter can do the filtering server-side.
        root = f"{self.prefix}chunks/"
        request: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": root + _fan_out(prefix),
            "MaxKeys": self.page_size,
        }
        if after:
            request["StartAfter"] = root + _fan_out(after)
        while True:
            page = await self._call(lambda: self._client.list_objects_v2(**request))
            for item in page.get("Contents", []):
                chunk_id = item["Key"].rsplit("/", 1)[-1]
                if chunk_id.startswith(prefix) and chunk_id > after:
                    yield chunk_id
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            request["ContinuationToken"] = token

    async def check(self) -> None:
        try:
            await self._call(self._client.head_bucket, Bucket=self.bucket)
        except NotFound:
            if not self._create:
                raise StoreUnavailable(
                    f"bucket {self.bucket!r} does not exist in {self._where()} "
                    "(mediadrive drive create --create-bucket makes it)"
                ) from None
            await self._call(self._client.create_bucket, Bucket=self.bucket)

    async def close(self) -> None:
        if self._direct is not None:
            await self._direct.close()
        if self._manager is not None:
            manager, self._manager = self._manager, None
            # Uploads still running belong to callers that gave up: abort them.
            await asyncio.get_running_loop().run_in_executor(
                self._pool, lambda: manager.shutdown(cancel=True)
            )
        self._pool.shutdown(wait=False)
        self._client.close()


register("s3", S3BlobStore.from_url, check_s3_url)
