"""The FastAPI application: JSON API + the web page, over one store.

Model calls go through one lock (the encoder is not re-entrant and a 2-core box gains nothing
from parallel forward passes); everything else runs concurrently in FastAPI's thread pool.
"""

from __future__ import annotations

import threading
from importlib.resources import files
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from indexer.errors import PixdexError
from indexer.inputs import load_image_input
from pixdex.server.files import NotServable, media_type, thumbnail, verified_bytes
from pixdex.server.limits import Limits
from pixdex.server.service import StoreService

WEB_DIR = Path(str(files("pixdex") / "web"))
ItemId = Annotated[int, PathParam(ge=-(2**63), le=2**63 - 1, description="a stored item id")]


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "detail": message, "status": status}, status_code=status)


def create_app(store: str | Path, model: str | None = None, device: str = "auto",
               limits: Limits | None = None) -> FastAPI:
    """An app serving `store`; the model is loaded once, here."""
    limits = limits or Limits()
    service = StoreService(store, model=model, device=device, limits=limits)
    lock = threading.Lock()
    dup_lock = threading.Lock()
    app = FastAPI(title="pixdex", version=service.version,
                  description="Search and tag an image store. Responses use the CLI's --json records.")
    app.state.service = service

    @app.exception_handler(PixdexError)
    async def _pixdex_error(request: Request, exc: PixdexError):
        return error(getattr(exc, "status", 400), str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body")
        return error(422, f"invalid parameter {where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.middleware("http")
    async def _bound_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limits.max_upload_bytes + 64 * 1024:
            return error(413, f"request body of {int(size)} bytes exceeds the {limits.max_upload_bytes} byte limit")
        return await call_next(request)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "items": service.store.count}

    @app.get("/api/info")
    def info() -> dict:
        return service.info()

    @app.get("/api/search")
    def search_get(q: str, k: int = 10, where: str | None = None, threshold: float | None = None,
                   sort: str | None = None) -> dict:
        with lock:
            return {"query": q, "results": service.search([q], k, where, threshold, sort)[0]}

    @app.post("/api/search")
    async def search_post(request: Request) -> dict:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form, upload, image = await _uploaded_image(request, limits)
            k = _int(form.get("k"), 10, "k")
            with lock:
                hits = service.search_image(image, k, form.get("where") or None, _float(form.get("threshold")),
                                            form.get("sort") or None, _columns(form.get("columns")))
            return {"query": getattr(upload, "filename", "image"), "results": hits}
        body = await _json(request)
        with lock:
            return service.search_body(body)

    @app.post("/api/classify")
    async def classify(request: Request) -> dict:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form, _, image = await _uploaded_image(request, limits)
            labels = [s.strip() for s in str(form.get("labels") or "").split(",") if s.strip()]
            with lock:
                return service.classify_image(image, labels, form.get("template") or None)
        body = await _json(request)
        with lock:
            return service.classify_ids(body.get("ids"), body.get("labels"), body.get("template"),
                                        body.get("top_k"))

    @app.get("/api/duplicates")
    def duplicates(threshold: float | None = None, tolerance: float | None = None, limit: int | None = None) -> dict:
        with dup_lock:  # one computation at a time; later calls get the cached groups
            return service.duplicates(threshold, tolerance, limit)

    @app.get("/api/items/{item_id}")
    def item(item_id: ItemId) -> dict:
        return service.item(item_id)

    @app.get("/api/items/{item_id}/thumbnail")
    def item_thumbnail(item_id: ItemId) -> Response:
        meta = service.item(item_id)
        try:
            data = thumbnail(meta, service.store.path / "cache" / "thumbs", limits.thumbnail_edge,
                             limits.max_image_pixels)
        except NotServable as exc:
            return error(404, f"item {item_id}: {exc}")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/items/{item_id}/image")
    def item_image(item_id: ItemId) -> Response:
        meta = service.item(item_id)
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


async def _uploaded_image(request: Request, limits: Limits):
    """(form, upload, RGB image) from a multipart request's `image` field, within the size limits."""
    form = await request.form()
    upload = form.get("image")
    if upload is None or not hasattr(upload, "read"):
        raise PixdexError("multipart request needs an 'image' file field")
    data = await upload.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise UploadTooLarge(f"image upload exceeds the {limits.max_upload_bytes} byte limit")
    return form, upload, load_image_input(data, max_pixels=limits.max_image_pixels, option="--max-image-pixels")


async def _json(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise PixdexError("request body must be JSON (or multipart/form-data with an image)") from None
    if not isinstance(body, dict):
        raise PixdexError("request body must be a JSON object")
    return body


def _int(value, default: int, name: str) -> int:
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PixdexError(f"{name} must be an integer, got {value!r}") from None


def _columns(value) -> list[str] | None:
    """A form field 'taken,camera_model' as a list of column names."""
    return [c.strip() for c in str(value).split(",") if c.strip()] if value else None


def _float(value) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PixdexError(f"threshold must be a number, got {value!r}") from None
