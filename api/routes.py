"""The HTTP endpoints: parse and check the request, run the service in a thread, shape the JSON."""

from __future__ import annotations

import functools
import hmac
from typing import Annotated, Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.datastructures import UploadFile as StarletteUploadFile

from api.errors import ApiError
from api.schemas import (
    DeleteResponse,
    EnrollResponse,
    ErrorResponse,
    HitOut,
    IngestResponse,
    ItemResponse,
    RecognizeResponse,
    SearchOptions,
    SearchResponse,
    VectorQuery,
    VerifyResponse,
)
from api.service import SearchResult, SearchService
from index.store import Hit

MAX_INGEST_FILES = 64

router = APIRouter()
bearer = HTTPBearer(auto_error=False, description="TWINSTREAM_API_TOKEN, when the server has one")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


async def blocking(fn, *args, **kwargs):
    """Run blocking work (onnxruntime, Redis, Kafka) in a worker thread.

    ``abandon_on_cancel``: when the request times out, the response goes out at once instead of
    waiting for the thread.
    """
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                          abandon_on_cancel=True)


def service(request: Request) -> SearchService:
    return request.app.state.service


def require_token(request: Request,
                  credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    """Write endpoints need ``Authorization: Bearer <token>`` when the server has one
    (``TWINSTREAM_API_TOKEN`` or the file ``--token-file`` names)."""
    token = request.app.state.token
    if not token:
        return
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                       headers={"WWW-Authenticate": "Bearer"})


def thumbnail_url(request: Request, image_id: str) -> str:
    return f"{request.scope.get('root_path', '')}/items/{quote(image_id, safe='')}/thumbnail"


def hit_out(request: Request, hit: Hit) -> HitOut:
    return HitOut(id=hit.id, score=hit.score, attributes=hit.attributes,
                  thumbnail_url=thumbnail_url(request, hit.id))


def _server_timing(timings: dict[str, float]) -> dict[str, str]:
    return {"Server-Timing": ", ".join(f"{k};dur={v}" for k, v in timings.items())}


# --- search ------------------------------------------------------------------------------------

SEARCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary",
                              "description": "the query image (PNG, JPEG, WebP, GIF, BMP...)"},
                    "k": {"type": "integer", "minimum": 1, "default": 10},
                    "filter": {"type": "string",
                               "description": 'attribute filter, e.g. .label == "cat"'},
                }}},
            "application/json": {"schema": VectorQuery.model_json_schema()},
        },
    }
}


@router.post("/search", response_model=SearchResponse, openapi_extra=SEARCH_BODY,
             responses=_errors(400, 404, 409, 413, 415, 422, 503, 504), tags=["search"])
async def search(request: Request) -> Response:
    """Nearest items to an uploaded image (multipart ``image``, ``k``, ``filter``), to a vector,
    or to an indexed item (JSON ``{"vector": [...]} `` or ``{"id": "..."}`` with ``k``, ``filter``).
    """
    svc = service(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=8) as form:
            options = _validated(SearchOptions, {k: v for k, v in form.items()
                                                 if isinstance(v, str)})
            upload = form.get("image")
            if not isinstance(upload, StarletteUploadFile):
                raise ApiError(422, "image: a file upload named 'image' is required",
                               [{"field": "image", "message": "missing file"}])
            data = await upload.read()
        k, filt = svc.check_k(options.k), svc.check_filter(options.filter)
        result = await blocking(svc.search_image, data, k, filt)
    elif content_type == "application/json" or content_type.endswith("+json"):
        query = _validated(VectorQuery, await _json_body(request))
        k, filt = svc.check_k(query.k), svc.check_filter(query.filter)
        if query.id is not None:
            result = await blocking(svc.search_like, query.id, k, filt)
        else:
            result = await blocking(svc.search_vector, query.vector, k, filt)
    else:
        raise ApiError(415, "send multipart/form-data with an 'image' file, or application/json "
                            "with a 'vector' or an 'id'")
    return _search_response(request, result, k, filt)


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except RecursionError as exc:
        raise ApiError(400, "body is not valid JSON: nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ApiError(400, f"body is not valid JSON: {str(exc)[:200]}") from exc


def _validated(model, data: Any):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                  for e in exc.errors()]
        first = detail[0] if detail else {"field": "", "message": "invalid"}
        raise ApiError(422, f"{first['field'] or 'body'}: {first['message']}", detail) from None


def _search_response(request: Request, result: SearchResult, k: int, filt: str | None
                     ) -> JSONResponse:
    info = result.index.info
    body = SearchResponse(
        model_version=info.version, index={"name": info.name, "version": info.version,
                                           "dim": info.dim},
        k=k, filter=filt, hits=[hit_out(request, h) for h in result.hits],
        timings_ms=result.timings_ms)
    return JSONResponse(body.model_dump(), headers=_server_timing(result.timings_ms))


# --- items -------------------------------------------------------------------------------------
# The thumbnail route comes first: ids may contain "/", so "{item_id:path}" would swallow it.

@router.get("/items/{item_id:path}/thumbnail", responses={
    200: {"content": {"image/jpeg": {}}, "description": "a JPEG of at most 128x128"},
    **_errors(404, 503)}, response_class=Response, tags=["items"])
async def get_thumbnail(request: Request, item_id: str) -> Response:
    """The small JPEG kept for an item at ingest time."""
    jpeg = await blocking(service(request).thumbnail, item_id)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=300"})


@router.get("/items/{item_id:path}", response_model=ItemResponse,
            responses=_errors(404, 503), tags=["items"])
async def get_item(request: Request, item_id: str,
                   vector: Annotated[bool, Query(description="include the stored vector")] = False
                   ) -> ItemResponse:
    """An indexed item's attributes (and, on request, its stored vector)."""
    index, attrs, stored = await blocking(service(request).item, item_id, vector)
    return ItemResponse(id=item_id, model_version=index.info.version, attributes=attrs,
                        thumbnail_url=thumbnail_url(request, item_id),
                        vector=None if stored is None else [float(x) for x in stored])


@router.delete("/items/{item_id:path}", response_model=DeleteResponse, status_code=202,
               dependencies=[Depends(require_token)],
               responses=_errors(401, 422, 503), tags=["write"])
async def delete_item(request: Request, item_id: str) -> DeleteResponse:
    """Publish a tombstone for the id; the workers remove it from the index."""
    svc = service(request)
    indexed = await blocking(svc.delete, item_id)
    return DeleteResponse(id=item_id, indexed=indexed, topic=svc.settings.kafka.topic)


# --- one-shot recognition ----------------------------------------------------------------------

ImageFile = Annotated[UploadFile, File(description="an image (PNG, JPEG, WebP, GIF, BMP...)")]
Threshold = Annotated[float | None, Form(
    description="cosine cut for 'same'; default: the model card's")]


@router.post("/recognize", response_model=RecognizeResponse,
             responses=_errors(400, 409, 413, 415, 422, 503, 504), tags=["recognition"])
async def recognize_image(request: Request, image: ImageFile,
                          k: Annotated[int, Form(ge=1)] = 5,
                          threshold: Threshold = None) -> RecognizeResponse:
    """The label of the nearest enrolled reference, or "unknown" below the threshold."""
    svc = service(request)
    k, threshold = svc.check_k(k), svc.check_threshold(threshold)
    result, index, timings = await blocking(svc.recognize, await image.read(), k, threshold)
    return RecognizeResponse(
        label=result.label if result.known else "unknown", known=result.known,
        score=result.score, threshold=result.threshold,
        best=hit_out(request, result.best) if result.best else None,
        hits=[hit_out(request, h) for h in result.hits], model_version=index.info.version,
        timings_ms=timings)


@router.post("/verify", response_model=VerifyResponse,
             responses=_errors(400, 413, 415, 422, 503, 504), tags=["recognition"])
async def verify_pair(request: Request, a: ImageFile, b: ImageFile,
                      threshold: Threshold = None) -> VerifyResponse:
    """Whether two images show the same thing: their similarity against the threshold."""
    svc = service(request)
    svc.check_threshold(threshold)
    result = await blocking(svc.verify, await a.read(), await b.read(), threshold)
    return VerifyResponse(score=result.score, threshold=result.threshold, same=result.same,
                          model_version=svc.require_encoder().version)


@router.post("/enroll", response_model=EnrollResponse, status_code=201,
             dependencies=[Depends(require_token)],
             responses=_errors(400, 401, 409, 413, 415, 422, 503, 504), tags=["write"])
async def enroll_image(request: Request, image: ImageFile,
                       label: Annotated[str, Form(min_length=1, max_length=200)],
                       id: Annotated[str | None, Form(description="default: content hash")] = None,
                       attributes: Annotated[str | None, Form(
                           description="JSON object of extra attributes")] = None
                       ) -> EnrollResponse:
    """Add one labelled reference image to the index now (no Kafka round trip)."""
    svc = service(request)
    attrs = svc.parse_attributes(attributes, None)
    image_id, index = await blocking(svc.enroll, await image.read(), label, id, attrs)
    return EnrollResponse(id=image_id, label=label.strip(), model_version=index.info.version,
                          index=index.info.name)


@router.post("/ingest", response_model=IngestResponse, status_code=202,
             dependencies=[Depends(require_token)],
             responses=_errors(400, 401, 413, 415, 422, 503, 504), tags=["write"])
async def ingest_images(request: Request,
                        image: Annotated[list[UploadFile], File(
                            description=f"one or more images (at most {MAX_INGEST_FILES})")],
                        id: Annotated[str | None, Form(
                            description="id of a single image; default: content hash")] = None,
                        label: Annotated[str | None, Form(max_length=200)] = None,
                        attributes: Annotated[str | None, Form(
                            description="JSON object of extra attributes")] = None
                        ) -> IngestResponse:
    """Publish images to the images topic; the workers embed and index them."""
    svc = service(request)
    if not 1 <= len(image) <= MAX_INGEST_FILES:
        raise ApiError(422, f"send between 1 and {MAX_INGEST_FILES} images, got {len(image)}")
    if id is not None and len(image) != 1:
        raise ApiError(422, "id names a single image; leave it out when sending several")
    attrs = svc.parse_attributes(attributes, label)
    uploads = [(await u.read(), u.content_type or "application/octet-stream") for u in image]
    ids = await blocking(svc.ingest, uploads, id, attrs)
    return IngestResponse(ids=ids, topic=svc.settings.kafka.topic)
