"""The live-filesystem API: JSON over HTTP on the mount's unix socket (mode 0600).

Paths in requests are paths inside the mount (``/shots/a.exr``). Errors answer
``{"error": "one line"}`` with 400 (bad request), 404 (no such path or version),
409 (conflict), 503 (store unreachable) or 507 (store full). ``GET /openapi.json`` describes it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mediadrive.core import private
from mediadrive.core.errors import (
    ConflictError,
    InvalidPath,
    MediadriveError,
    NotFound,
    StoreFull,
    StoreUnavailable,
)

from .hydrate import Manifest
from .service import MountService

M = TypeVar("M", bound=BaseModel)
# Version and event numbers are 64-bit signed in the metadata stores: a larger one
# is a bad request, not a database overflow.
MAX_NUMBER = (1 << 63) - 1
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVICE_KEY = web.AppKey("service", MountService)


class PathRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = "/"


class SaveRequest(PathRequest):
    message: str = ""


class RestoreRequest(PathRequest):
    version: int = Field(ge=1, le=MAX_NUMBER)
    message: str = ""


class HydrateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patterns: list[str] = Field(default_factory=list)
    manifest: Manifest | None = None
    pin: bool | None = None


def _status_for(exc: MediadriveError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, StoreFull):
        return 507
    if isinstance(exc, StoreUnavailable):
        return 503
    return 400


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "request"
    return f"{where}: {first['msg']}"


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except ValidationError as exc:
        return _error(400, _validation_message(exc))
    except MediadriveError as exc:
        return _error(_status_for(exc), str(exc))


async def _body(request: web.Request, model: type[M]) -> M:
    try:
        # Bytes, not text: a body that is not UTF-8 is bad input (json.loads checks it).
        raw = json.loads(await request.read()) if request.can_read_body else {}
    except ValueError:
        raise InvalidPath("the request body is not UTF-8 JSON") from None
    return model.model_validate(raw)


def _number_query(request: web.Request, name: str, least: int) -> int | None:
    """An optional integer query parameter, ``least`` to 2^63-1."""
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidPath(f"{name} {raw!r} is not a number") from None
    if not least <= value <= MAX_NUMBER:
        raise InvalidPath(f"{name} {raw} is out of range ({least} to {MAX_NUMBER})")
    return value


def _service(request: web.Request) -> MountService:
    return request.app[SERVICE_KEY]


def _query_path(request: web.Request) -> str:
    path = request.query.get("path")
    if not path:
        raise InvalidPath("query parameter 'path' is required")
    return path


async def status(request: web.Request) -> web.Response:
    return web.json_response(_service(request).status().model_dump())


async def save(request: web.Request) -> web.Response:
    body = await _body(request, SaveRequest)
    reports = await _service(request).save(body.path, body.message)
    return web.json_response({"saved": [r.as_dict() for r in reports]})


async def publish(request: web.Request) -> web.Response:
    body = await _body(request, SaveRequest)
    return web.json_response(await _service(request).publish(body.path, body.message))


async def versions(request: web.Request) -> web.Response:
    return web.json_response(await _service(request).versions(_query_path(request)))


async def read(request: web.Request) -> web.StreamResponse:
    version = _number_query(request, "version", 1)
    size, chunks = await _service(request).read_version(_query_path(request), version)
    response = web.StreamResponse(
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    )
    await response.prepare(request)
    async for data in chunks:
        await response.write(data)
    await response.write_eof()
    return response


async def restore(request: web.Request) -> web.Response:
    body = await _body(request, RestoreRequest)
    return web.json_response(await _service(request).restore(body.path, body.version, body.message))


async def pin(request: web.Request) -> web.Response:
    body = await _body(request, PathRequest)
    return web.json_response(await _service(request).pin(body.path))


async def unpin(request: web.Request) -> web.Response:
    body = await _body(request, PathRequest)
    return web.json_response(await _service(request).unpin(body.path))


async def hydrate(request: web.Request) -> web.StreamResponse:
    """Streams one JSON object per line: progress, then the result (or an error)."""
    body = await _body(request, HydrateRequest)
    if not body.patterns and body.manifest is None:
        raise InvalidPath("give at least one glob or a manifest")
    pin_files = body.pin if body.pin is not None else (body.manifest.pin if body.manifest else True)
    service = _service(request)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = asyncio.get_running_loop().time()
        if now - last[0] >= 0.1 or done >= total:
            last[0] = now
            queue.put_nowait({"progress": done, "total": total})

    async def work() -> None:
        try:
            result = await service.hydrate(body.patterns, body.manifest, pin_files, progress)
            queue.put_nowait({"done": result})
        except MediadriveError as exc:
            queue.put_nowait({"error": str(exc)})
        except Exception as exc:
            queue.put_nowait({"error": f"hydrate failed: {exc!r}"})

    task = asyncio.create_task(work())
    try:
        while True:
            item = await queue.get()
            await response.write((json.dumps(item) + "\n").encode())
            if "done" in item or "error" in item:
                break
    finally:
        if not task.done():
            task.cancel()
    await response.write_eof()
    return response


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one ``event: KIND`` with a JSON ``data:`` line per change."""
    since = _number_query(request, "since", 0)
    service = _service(request)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    async for event in service.events(since):
        payload = asdict(event)
        payload["path"] = service.mount_path(event.path)
        text = f"id: {event.seq}\nevent: {event.kind}\ndata: {json.dumps(payload)}\n\n"
        await response.write(text.encode())
    return response


async def unmount(request: web.Request) -> web.Response:
    """Commit what is pending, answer, then unmount and stop the agent."""
    return web.json_response(await _service(request).unmount())


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}

    def body(model: type[BaseModel]) -> dict[str, Any]:
        # Models and the models they use go to components/schemas, where their $refs
        # point (pydantic's own $defs would not resolve from the document's root).
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        ref = {"$ref": f"#/components/schemas/{model.__name__}"}
        return {"content": {"application/json": {"schema": ref}}}

    def ok(description: str, media: str = "application/json") -> dict[str, Any]:
        return {"200": {"description": description, "content": {media: {}}}}

    path_param = {"name": "path", "in": "query", "required": True, "schema": {"type": "string"}}
    version_param = {
        "name": "version",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_NUMBER},
    }
    since_param = {
        "name": "since",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_NUMBER},
    }
    errors = {
        "400": {"description": 'bad request; {"error": message}'},
        "404": {"description": "no such path or version"},
        "409": {"description": "conflict (reject policy, or file busy)"},
        "507": {"description": "the drive's store is full"},
        "503": {"description": "the drive's store cannot be reached"},
    }
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "mediadrive live-filesystem API",
            "version": "1",
            "description": "Served by the node agent of one mount on its unix socket. "
            "Paths are paths inside the mount.",
        },
        "paths": {
            "/v1/status": {"get": {"summary": "Mount figures", "responses": ok("status")}},
            "/v1/save": {
                "post": {
                    "summary": "Commit staged changes at or under a path now",
                    "requestBody": body(SaveRequest),
                    "responses": {**ok("{saved: [commit reports]}"), **errors},
                }
            },
            "/v1/versions": {
                "get": {
                    "summary": "Every version of a file",
                    "parameters": [path_param],
                    "responses": {**ok("list of versions"), **errors},
                }
            },
            "/v1/read": {
                "get": {
                    "summary": "The bytes of a version of a file (the head by default)",
                    "parameters": [path_param, version_param],
                    "responses": {**ok("file bytes", "application/octet-stream"), **errors},
                }
            },
            "/v1/restore": {
                "post": {
                    "summary": "Make an old version the head again (as a new version)",
                    "requestBody": body(RestoreRequest),
                    "responses": {**ok("{path, version, restored}"), **errors},
                }
            },
            "/v1/publish": {
                "post": {
                    "summary": "Save, then publish what the storage pods hold to the cloud",
                    "requestBody": body(SaveRequest),
                    "responses": {
                        **ok(
                            "{saved: [...], files, versions, chunks_sent, bytes_sent, "
                            "chunks_present, temporary_skipped, paths, tier}"
                        ),
                        **errors,
                    },
                }
            },
            "/v1/pin": {
                "post": {
                    "summary": "Keep a file or folder local: fetch it and never evict it",
                    "requestBody": body(PathRequest),
                    "responses": {**ok("{path, files, bytes, bytes_fetched}"), **errors},
                }
            },
            "/v1/unpin": {
                "post": {
                    "summary": "Let a pinned path be evicted again",
                    "requestBody": body(PathRequest),
                    "responses": {**ok("{path, unpinned}"), **errors},
                }
            },
            "/v1/hydrate": {
                "post": {
                    "summary": "Fetch the files a workflow needs (globs and/or a manifest)",
                    "requestBody": body(HydrateRequest),
                    "responses": {
                        **ok(
                            "one JSON object per line: {progress, total}..., then {done: "
                            "{files, bytes, bytes_fetched, pinned}} or {error}",
                            "application/x-ndjson",
                        ),
                        **errors,
                    },
                }
            },
            "/v1/events": {
                "get": {
                    "summary": "The drive's change events as server-sent events",
                    "parameters": [since_param],
                    "responses": {**ok("event stream", "text/event-stream"), "400": errors["400"]},
                }
            },
            "/v1/unmount": {
                "post": {"summary": "Commit pending changes and unmount", "responses": ok("ok")}
            },
        },
    }
    document["components"] = {"schemas": schemas}
    return document


def make_app(service: MountService) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=16 << 20)
    app[SERVICE_KEY] = service
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/save", save)
    app.router.add_post("/v1/publish", publish)
    app.router.add_get("/v1/versions", versions)
    app.router.add_get("/v1/read", read)
    app.router.add_post("/v1/restore", restore)
    app.router.add_post("/v1/pin", pin)
    app.router.add_post("/v1/unpin", unpin)
    app.router.add_post("/v1/hydrate", hydrate)
    app.router.add_get("/v1/events", events)
    app.router.add_post("/v1/unmount", unmount)
    return app


async def start_api(service: MountService, socket_path: Path) -> Callable[[], Awaitable[None]]:
    """Serve the API on ``socket_path`` (0600); returns the coroutine that stops it."""
    await asyncio.to_thread(_clear_socket, socket_path)
    runner = web.AppRunner(make_app(service), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    old_umask = os.umask(0o177)
    try:
        site = web.UnixSite(runner, str(socket_path))
        await site.start()
    finally:
        os.umask(old_umask)
    os.chmod(socket_path, 0o600)

    async def stop() -> None:
        await runner.cleanup()
        await asyncio.to_thread(_clear_socket, socket_path)

    return stop


def _clear_socket(socket_path: Path) -> None:
    private.make_dir(socket_path.parent)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
