"""The FastAPI application: JSON API + the web page, over one store.

Every answer, errors included, is JSON; every body is bounded (pixdex.server.guards) and a request whose
Host header names another site is refused (DNS rebinding). Model calls are serialised inside the service;
everything else runs concurrently in FastAPI's thread pool.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from indexer.errors import InvalidType, InvalidValue, LimitExceeded, PixdexError
from indexer.ids import describe
from indexer.inputs import load_image_input
from pixdex.server.files import NotServable, media_type, thumbnail, verified_bytes
from pixdex.server.guards import BodyLimit, BodyTooLarge, HostCheck, allowed_hosts
from pixdex.server.limits import Limits
from pixdex.server.service import Invalid, StoreService

WEB_DIR = Path(str(files("pixdex") / "web"))
ItemId = Annotated[int, PathParam(ge=-(2**63), le=2**63 - 1, description="a stored item id")]


def error(status: int, message: str) -> JSONResponse:
    """The one error shape: {"error": "one line", "status": N} ("detail" kept for older clients)."""
    message = " ".join(message.split())
    return JSONResponse({"error": message, "detail": message, "status": status}, status_code=status)


def status_of(exc: PixdexError) -> int:
    """400 a bad query or image, 413 over a bound, 422 an invalid parameter (or the error's own status)."""
    if hasattr(exc, "status"):
        return exc.status
    if isinstance(exc, LimitExceeded):
        return 413
    return 422 if isinstance(exc, (InvalidType, InvalidValue)) else 400


def create_app(store: str | Path, model: str | None = None, device: str = "auto",
               limits: Limits | None = None, host: str | None = "127.0.0.1",
               allow_hosts: Iterable[str] = ()) -> FastAPI:
    """An app serving `store`; the model is loaded once, here. Requests must name `host`, a loopback
    name or one of `allow_hosts` in their Host header ('*' in allow_hosts: any)."""
    limits = limits or Limits()
    service = StoreService(store, model=model, device=device, limits=limits)
    dup_lock = threading.Lock()
    app = FastAPI(title="pixdex", version=service.version,
                  description="Search and tag an image store. Responses use the CLI's --json records.")
    app.state.service = service

    @app.exception_handler(PixdexError)
    async def _pixdex_error(request: Request, exc: PixdexError):
        return error(status_of(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body")
        return error(422, f"invalid parameter {where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)  # also the router's own 404 and 405
    async def _http(request: Request, exc: HTTPException):
        message = {404: f"no such endpoint: {request.method} {request.url.path[:200]}",
                   405: f"method {request.method} is not allowed on {request.url.path[:200]}"}
        return error(exc.status_code, message.get(exc.status_code, str(exc.detail)))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge):
        return error(413, str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # a bug: still one JSON line, no traceback out
        print(f"pixdex serve: {request.method} {request.url.path}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return error(500, f"internal error ({type(exc).__name__})")

    def body_limit(content_type: str) -> int:
        if content_type.startswith("multipart/form-data"):
            return limits.max_upload_bytes + 64 * 1024
        return limits.max_json_bytes

    app.add_middleware(BodyLimit, limit_for=body_limit)
    app.add_middleware(HostCheck, hosts=allowed_hosts(host, allow_hosts))

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "items": service.store.count, "generation": service.generation}

    @app.get("/api/info")
    def info() -> dict:
        return service.info()

    @app.get("/api/search")
    def search_get(q: str, k: int = 10, where: str | None = None, threshold: float | None = None,
                   sort: str | None = None) -> dict:
        return {"query": q, "results": service.search([q], k, where, threshold, sort)[0]}

    # Bodies are read on the event loop; the work (decoding, URL fetches, the model) runs in the thread pool.
    @app.post("/api/search")
    async def search_post(request: Request) -> dict:
        if _is_multipart(request):
            form, upload = await _upload(request, limits)
            image = await run_in_threadpool(load_image_input, upload, max_pixels=limits.max_image_pixels,
                                           option="--max-image-pixels")
            hits = await run_in_threadpool(service.search_image, image, _int(form.get("k"), 10, "k"),
                                           _text(form.get("where")), _float(form.get("threshold")),
                                           _text(form.get("sort")), _columns(_text(form.get("columns"))))
            return {"query": getattr(form.get("image"), "filename", None) or "image", "results": hits}
        return await run_in_threadpool(service.search_body, await _json(request))

    @app.post("/api/classify")
    async def classify(request: Request) -> dict:
        if _is_multipart(request):
            form, upload = await _upload(request, limits)
            image = await run_in_threadpool(load_image_input, upload, max_pixels=limits.max_image_pixels,
                                           option="--max-image-pixels")
            return await run_in_threadpool(service.classify_image, image, _text(form.get("labels")) or "",
                                           _text(form.get("template")))
        body = await _json(request)
        return await run_in_threadpool(service.classify_ids, body.get("ids"), body.get("labels"),
                                       body.get("template"), body.get("top_k"), body.get("examples"),
                                       body.get("suggest"))

    @app.get("/api/duplicates")
    def duplicates(threshold: float | None = None, tolerance: float | None = None,
                   limit: int | None = None) -> dict:
        with dup_lock:  # one computation at a time; later calls get the cached groups
            return service.duplicates(threshold, tolerance, limit)

    @app.get("/api/items/{item_id}")
    def item(item_id: ItemId) -> dict:
        return service.item(item_id)

    @app.get("/api/items/{item_id}/thumbnail")
    def item_thumbnail(item_id: ItemId) -> Response:
        meta = service.file_item(item_id)
        try:
            data = thumbnail(meta, service.thumbnails, limits.thumbnail_edge, limits.max_image_pixels)
        except NotServable as exc:
            return error(404, f"item {item_id}: {exc}")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/items/{item_id}/image")
    def item_image(item_id: ItemId) -> Response:
        meta = service.file_item(item_id)
        try:
            data = verified_bytes(meta)
        except NotServable as exc:
            return error(404, f"item {item_id}: {exc}")
        return Response(data, media_type=media_type(data))

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    return app


class UploadTooLarge(PixdexError):
    status = 413


class UnsupportedMedia(PixdexError):
    status = 415


async def _upload(request: Request, limits: Limits) -> tuple:
    """(form, bytes of the `image` file field), within the upload limit."""
    form = await request.form()
    upload = form.get("image")
    if upload is None or not hasattr(upload, "read"):
        raise PixdexError("multipart request needs an 'image' file field")
    data = await upload.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise UploadTooLarge(f"image upload exceeds the {limits.max_upload_bytes:,} byte limit")
    return form, data


def _is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


async def _json(request: Request) -> dict:
    """The body as a JSON object; only when sent as JSON (a cross-site form or text/plain POST is refused)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not (ctype.startswith("application/") and ctype.endswith("+json")):
        raise UnsupportedMedia(f"request body must be JSON sent as Content-Type: application/json (got "
                               f"{ctype[:60] or 'none'}), or multipart/form-data with an image")
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, too many digits, too deep
        raise PixdexError("request body is not valid JSON (or is nested too deeply)") from None
    if not isinstance(body, dict):
        raise PixdexError("request body must be a JSON object")
    return body


def _text(value) -> str | None:
    """A form field as text (a file where text belongs is an error)."""
    if value is None or isinstance(value, str):
        return value or None
    raise PixdexError("expected a text field, got a file")


def _int(value, default: int, name: str) -> int:
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise Invalid(f"{name} must be an integer, got {describe(value)}") from None


def _columns(value: str | None) -> list[str] | None:
    """A form field 'taken,camera_model' as a list of column names."""
    return [c.strip() for c in value.split(",") if c.strip()] if value else None


def _float(value) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise Invalid(f"threshold must be a number, got {describe(value)}") from None
