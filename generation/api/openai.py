"""The OpenAI Images API (`/v1/...`): what the `openai` package and Open WebUI's
"openai" image engine send, answered from the one global queue.

Authentication is `Authorization: Bearer <key>`. Errors have OpenAI's shape:
`{"error": {"message", "type", "param", "code"}}`. With `stream: true`, generations and
edits answer with Server-Sent Events: partial images from the job's live previews, then
one completed event per image.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, HttpRequest, JsonResponse, StreamingHttpResponse
from django.urls import reverse
from PIL import Image

from generation.api import DATABASE_AWAY, OUTAGE_RETRY_AFTER, ApiFailure, api_view
from generation.api import jobs as api_jobs
from generation.api.auth import api_key_authenticate, bearer_key
from generation.api.waiting import run_db, wait_for_jobs, wait_for_start
from generation.forms import COUNT_MAX, VARY_STRONG
from generation.loras import LoraError, split_request
from generation.models import ApiKey, ImageJob
from generation.outages import DATABASE, OUTAGES, kind_of
from generation.registry import get_registry
from generation.request import IMG2IMG, INPAINT, format_loras
from generation.services import JobRefused
from generation.uploads import MAX_UPLOAD_BYTES, TRANSPARENT, mask_from, read_image

logger = logging.getLogger(__name__)

N_MAX = COUNT_MAX
PARTIAL_IMAGES_MAX = 3
RESPONSE_FORMATS = ("b64_json", "url")
# Names that answer as DALL-E does: a link unless b64_json is asked for. GPT image
# models (gpt-image-1, ...) always answer b64_json; so does any other name.
DALL_E_MODELS = ("dall-e-2", "dall-e-3")
# Fields only GPT image models take: without a model, OpenAI's default is dall-e-2
# unless one of them is set.
GPT_IMAGE_FIELDS = ("background", "moderation", "output_compression", "output_format", "partial_images", "stream")
# A stream that has nothing to say for this long sends an SSE comment, so that proxies
# do not close it while its job waits in the queue.
KEEP_ALIVE_SECONDS = 15
URL_SALT = "generation.api.openai.image"
# Our form's fields, by the name the OpenAI request calls them.
PARAM_NAMES = {"width": "size", "height": "size", "model": "model", "prompt": "prompt", "source_job": "image"}


class ApiError(ApiFailure):
    """An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        body = {"error": {"message": message, "type": type, "param": param, "code": code}}
        super().__init__(status, body, message=message, headers=headers)

    @classmethod
    def unavailable(cls, message: str, *, retry_after: int) -> ApiError:
        return cls(
            503, message, type="server_error", code="service_unavailable", headers={"Retry-After": str(retry_after)}
        )


def _method(request: HttpRequest, allowed: str) -> None:
    if request.method != allowed:
        raise ApiError(405, f"Method {request.method} is not allowed here; use {allowed}.", code="method_not_allowed")


async def _authenticate(request: HttpRequest) -> ApiKey:
    key = bearer_key(request.headers.get("Authorization", ""))
    api_key = await run_db(api_key_authenticate, key=key) if key else None
    if api_key is None:
        message = (
            "Incorrect API key provided." if key else "Missing API key: send the header 'Authorization: Bearer <key>'."
        )
        raise ApiError(401, message, code="invalid_api_key")
    return api_key


# --- Input ---------------------------------------------------------------------------


def _json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "The body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object.")
    return body


def model_name(value: Any) -> str:
    """A registry name as it is; anything else (dall-e-2, gpt-image-1, none) is the default model."""
    if isinstance(value, str) and value in get_registry():
        return value
    return settings.IMAGEGEN_DEFAULT_MODEL


def default_response_format(body: dict[str, Any]) -> str:
    """`url` for DALL-E names and our registry's, as DALL-E answers; `b64_json` for GPT
    image models and any other name. Without a model, OpenAI's default (dall-e-2) unless
    a field only GPT image models take is set."""
    model = body.get("model")
    if model in (None, ""):
        gpt_image = any(body.get(field) not in (None, "", False, "false") for field in GPT_IMAGE_FIELDS)
        return "b64_json" if gpt_image else "url"
    if isinstance(model, str) and (model in DALL_E_MODELS or model in get_registry()):
        return "url"
    return "b64_json"


def _whole_number(body: dict[str, Any], field: str, *, default: int, low: int, high: int) -> int:
    value = body.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"{field}: a whole number from {low} to {high}.", param=field)
    return value


def _flag(body: dict[str, Any], field: str) -> bool:
    """A boolean; a multipart form sends it as "true" or "false"."""
    value = body.get(field)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value is None or isinstance(value, bool):
        return bool(value)
    raise ApiError(400, f"{field}: true or false.", param=field)


def lora_pairs(value: Any) -> list[tuple[str, float]]:
    """The `loras` field (our extension) as (name, weight) pairs: a list of
    {"name": ..., "weight": ...} objects (weight 1 when left out) or of "name" and
    "name:weight" strings (`generation.loras.split_request`). Only the shape is checked
    here; the job form checks the names, families and weights."""
    shape = 'loras: a list of {"name": ..., "weight": ...} objects, or of "name" or "name:weight" strings.'
    if value is None:
        return []
    if not isinstance(value, list):
        raise ApiError(400, shape, param="loras")
    try:
        pairs = split_request(value)
    except LoraError as exc:
        raise ApiError(400, f"{exc} ({shape})", param="loras") from None
    # The job keeps its LoRAs as "name:weight" words: a name cannot hold a space.
    if any(name.split() != [name] or not math.isfinite(weight) for name, weight in pairs):
        raise ApiError(400, shape, param="loras")
    return pairs


def parse_generation(body: dict[str, Any]) -> dict[str, Any]:
    """The request's fields we honour, checked; the rest is ignored."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, "prompt: a non-empty string is required.", param="prompt")
    n = _whole_number(body, "n", default=1, low=1, high=N_MAX)
    response_format = body.get("response_format") or default_response_format(body)
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(400, "response_format: 'b64_json' or 'url'.", param="response_format")
    stream = _flag(body, "stream")
    partial_images = _whole_number(body, "partial_images", default=0, low=0, high=PARTIAL_IMAGES_MAX)
    size = body.get("size") or "auto"
    params: dict[str, Any] = {"model": model_name(body.get("model"))}
    if size != "auto":
        width, sep, height = str(size).partition("x")
        if not (sep and width.isdigit() and height.isdigit()):
            raise ApiError(400, "size: 'WIDTHxHEIGHT' (such as '512x512') or 'auto'.", param="size")
        params.update(width=int(width), height=int(height))
    loras = lora_pairs(body.get("loras"))
    if loras:
        params["loras"] = format_loras(loras)
    return {
        "prompt": prompt,
        "n": n,
        "response_format": response_format,
        "stream": stream,
        "partial_images": partial_images,
        "params": params,
    }


def validation_error(exc: ValidationError) -> ApiError:
    """The first bad field, by its OpenAI name, with every message."""
    errors = exc.message_dict if hasattr(exc, "error_dict") else {"prompt": exc.messages}
    field = next(iter(errors))
    message = " ".join(message for messages in errors.values() for message in messages)
    return ApiError(400, message, param=PARAM_NAMES.get(field, field))


# --- Views ---------------------------------------------------------------------------


@api_view(ApiError)
async def images_generations(request: HttpRequest):
    """POST /v1/images/generations: queue n images and answer when they are made."""
    _method(request, "POST")
    api_key = await _authenticate(request)
    asked = parse_generation(_json_body(request))
    key = api_jobs.request_key(
        endpoint="openai.images", idempotency_key=request.headers.get("Idempotency-Key", "").strip(), body=request.body
    )
    return await _queue_and_answer(request, api_key, asked, key=key, events="image_generation")


@api_view(ApiError)
async def images_edits(request: HttpRequest):
    """POST /v1/images/edits (multipart): the image changed as the prompt says; with a
    mask, only where the mask is transparent."""
    _method(request, "POST")
    api_key = await _authenticate(request)
    fields, uploads = _multipart(request)
    asked = parse_generation({**fields, "prompt": fields.get("prompt")})
    image, image_bytes = _upload(uploads, "image")
    asked["params"].update(source=image, kind=INPAINT if "mask" in uploads else IMG2IMG)
    if "mask" in uploads:
        mask, _ = _upload(uploads, "mask")
        try:
            asked["params"]["mask"] = mask_from(mask, size=image.size, marks=TRANSPARENT)
        except ValidationError as exc:
            raise ApiError(400, " ".join(exc.messages), param="mask") from None
    if fields.get("strength") not in (None, ""):
        asked["params"]["strength"] = fields["strength"]
    key = api_jobs.request_key(
        endpoint="openai.edits",
        idempotency_key=request.headers.get("Idempotency-Key", "").strip(),
        body=_fingerprint(fields, uploads),
    )
    return await _queue_and_answer(request, api_key, asked, key=key, events="image_edit")


@api_view(ApiError)
async def images_variations(request: HttpRequest):
    """POST /v1/images/variations (multipart): n variations of the image (its composition
    kept, a new seed each). Variations do not stream (nor do OpenAI's)."""
    _method(request, "POST")
    api_key = await _authenticate(request)
    fields, uploads = _multipart(request)
    asked = parse_generation({**fields, "prompt": fields.get("prompt") or VARIATION_PROMPT})
    image, _ = _upload(uploads, "image")
    asked["prompt"] = fields.get("prompt") or ""
    asked["params"].update(source=image, kind=IMG2IMG, strength=VARY_STRONG)
    key = api_jobs.request_key(
        endpoint="openai.variations",
        idempotency_key=request.headers.get("Idempotency-Key", "").strip(),
        body=_fingerprint(fields, uploads),
    )
    return await _queue_and_answer(request, api_key, asked, key=key)


VARIATION_PROMPT = "(variation)"  # stands in for the prompt a variation does not have, while it is checked


def _multipart(request: HttpRequest) -> tuple[dict[str, Any], dict[str, list[bytes]]]:
    """The form's fields (numbers as numbers, `loras` as a list) and its files by name
    (`image[]` is `image`)."""
    if not request.content_type.startswith("multipart/form-data"):
        raise ApiError(400, "Send the image as multipart/form-data (a file field named 'image').")
    fields: dict[str, Any] = {}
    for name, value in request.POST.items():
        if name.startswith("loras"):
            continue
        value = value.strip()
        fields[name] = int(value) if name in ("n", "partial_images") and value.isdigit() else value
    loras = _multipart_loras(request.POST)
    if loras is not None:
        fields["loras"] = loras
    uploads: dict[str, list[bytes]] = {}
    for name in request.FILES:
        for upload in request.FILES.getlist(name):
            if upload.size > MAX_UPLOAD_BYTES:
                raise ApiError(400, f"{name}: at most {MAX_UPLOAD_BYTES // 2**20} MB.", param=name.rstrip("[]"))
            uploads.setdefault(name.removesuffix("[]"), []).append(upload.read())
    return fields, uploads


def _multipart_loras(form) -> Any:
    """`loras` from a form: a JSON string, or as the openai package sends a list in
    `extra_body` (`loras[]` strings, or `loras[][name]` with `loras[][weight]`)."""
    if "loras" in form:
        try:
            return json.loads(form["loras"]) if form["loras"].strip() else None
        except ValueError:
            raise ApiError(400, "loras: a JSON list.", param="loras") from None
    if "loras[]" in form:
        return form.getlist("loras[]")
    names, weights = form.getlist("loras[][name]"), form.getlist("loras[][weight]")
    if not names:
        return None
    if weights and len(weights) != len(names):
        raise ApiError(400, "loras: give every LoRA a weight, or send loras as a JSON string.", param="loras")
    weights = weights or ["1"] * len(names)
    try:
        return [{"name": name, "weight": float(weight)} for name, weight in zip(names, weights, strict=True)]
    except ValueError:
        raise ApiError(400, "loras: each weight is a number.", param="loras") from None


def _upload(uploads: dict[str, list[bytes]], name: str):
    """The first file sent as `name`, read as an image (a model edits one image at a time)."""
    if not uploads.get(name):
        raise ApiError(400, f"{name}: a PNG, JPEG or WebP file is required.", param=name)
    data = uploads[name][0]
    try:
        return read_image(data, label=name), data
    except ValidationError as exc:
        raise ApiError(400, " ".join(exc.messages), param=name) from None


def _fingerprint(fields: dict[str, Any], uploads: dict[str, list[bytes]]) -> bytes:
    """What a multipart request is remembered by: its fields and files, not its random boundary."""
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    for name in sorted(uploads):
        for data in uploads[name]:
            digest.update(name.encode() + hashlib.sha256(data).digest())
    return digest.digest()


async def _queue_and_answer(
    request: HttpRequest, api_key: ApiKey, asked: dict[str, Any], *, key: str, events: str | None = None
):
    """Queue what was asked, wait for the images, and answer as the Images API does: in
    one JSON answer, or, when `stream` was asked where it can be (`events` names the
    events: image_generation, image_edit), as Server-Sent Events."""
    idempotency_key = request.headers.get("Idempotency-Key", "").strip()
    # The openai package sends the same body again on a retry and counts its tries.
    is_retry = request.headers.get("X-Stainless-Retry-Count", "0").strip() not in ("", "0")
    try:
        jobs = await run_db(
            api_jobs.api_jobs_submit,
            api_key=api_key,
            prompt=asked["prompt"],
            count=asked["n"],
            key=key,
            attach=bool(idempotency_key) or is_retry,
            **asked["params"],
        )
    except ValidationError as exc:
        raise validation_error(exc) from None
    except JobRefused as exc:
        if exc.refusal.unavailable:
            raise ApiError.unavailable(exc.refusal.message, retry_after=exc.refusal.retry_after) from None
        raise ApiError(
            429,
            exc.refusal.message,
            type="requests",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(exc.refusal.retry_after)},
        ) from None
    ids = [job.pk for job in jobs]
    if events and asked["stream"]:
        return _event_stream(_image_events(ids, events=events, partial_images=asked["partial_images"]))
    await wait_for_jobs(ids)
    results = await run_db(api_jobs.results, ids)
    made = [result for result in results if result.png is not None]
    if not made:
        raise _none_made(results)
    data = []
    for result in made:
        item: dict[str, Any] = {"revised_prompt": result.job.prompt}
        if asked["response_format"] == "url":
            item["url"] = request.build_absolute_uri(image_url_path(result.job))
        else:
            item["b64_json"] = base64.b64encode(result.png).decode("ascii")
        data.append(item)
    return JsonResponse({"created": int(time.time()), "data": data})


def _none_made(results: list[api_jobs.Result]) -> ApiError:
    """Why a request has no image: its first failed job's error, else a cancel."""
    failed = [result.job for result in results if result.job.status == ImageJob.Status.ERROR]
    if failed:
        error = failed[0].error or "The image could not be made."
        return ApiError(500, error, type="server_error", code="generation_failed")
    # Cancelled (from the chat, the admin) or deleted with its conversation.
    return ApiError(409, "The image was cancelled before it was made.", type="server_error", code="cancelled")


# --- Streaming -----------------------------------------------------------------------
#
# The events and their fields are those of OpenAI's image streams (the openai package's
# ImageGenStreamEvent and ImageEditStreamEvent): `event:` names the type, `data:` is
# the event as JSON with the same `type`. The package reads the type from the data.


def _event_stream(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


def _sse(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _image_fields(job: ImageJob) -> dict[str, Any]:
    """What every event says of the image: we make opaque PNGs, at the job's size."""
    return {
        "created_at": int(time.time()),
        "size": f"{job.width}x{job.height}",
        "quality": "auto",
        "background": "opaque",
        "output_format": "png",
    }


# No tokens are counted here; the field is required, so it says zero.
NO_USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}


async def _image_events(ids: list[int], *, events: str, partial_images: int) -> AsyncIterator[bytes]:
    """Each image in queue order: up to `partial_images` partial images while it runs,
    then its completed event (none for an image that failed or was cancelled). When
    none is made, an error event in OpenAI's error shape ends the stream. While there
    is nothing to send for KEEP_ALIVE_SECONDS, an SSE comment keeps proxies from
    closing the connection.

    A client that goes away cancels this, not the jobs: they run on, as they do for a
    request that does not stream.
    """
    # At once: the server sends the headers with the first bytes, and the client waits for them.
    yield KEEP_ALIVE
    try:
        results = []
        for job_id in ids:
            sent, seen, quiet_since = 0, None, time.monotonic()
            status = ImageJob.Status.QUEUED
            while sent < partial_images:
                if time.monotonic() - quiet_since >= KEEP_ALIVE_SECONDS:
                    yield KEEP_ALIVE
                    quiet_since = time.monotonic()
                # While it is queued, the watcher's one query a tick looks after it.
                if status == ImageJob.Status.QUEUED and not await _within(wait_for_start([job_id]), KEEP_ALIVE_SECONDS):
                    continue
                job, preview = await run_db(_running_preview, job_id, seen=seen)
                status = job.status if job is not None else None
                if status not in ImageJob.PENDING:
                    break  # it ended
                if preview is not None:
                    seen, b64 = preview
                    yield _sse(
                        {
                            "type": f"{events}.partial_image",
                            "b64_json": b64,
                            "partial_image_index": sent,
                            **_image_fields(job),
                        }
                    )
                    sent, quiet_since = sent + 1, time.monotonic()
                await asyncio.sleep(settings.IMAGEGEN_API_POLL_SECONDS)
            while not await _within(wait_for_jobs([job_id]), KEEP_ALIVE_SECONDS):
                yield KEEP_ALIVE
            result = next(iter(await run_db(api_jobs.results, [job_id])), None)
            if result is None:
                continue  # deleted with its conversation
            results.append(result)
            if result.png is not None:
                yield _sse(
                    {
                        "type": f"{events}.completed",
                        "b64_json": base64.b64encode(result.png).decode("ascii"),
                        **_image_fields(result.job),
                        "usage": NO_USAGE,
                    }
                )
        if not any(result.png is not None for result in results):
            yield _sse({"type": "error", **_none_made(results).body})
    except Exception as exc:
        # The answer has started: a failure is told as an error event, which the
        # openai package raises as APIError.
        if kind_of(exc) == DATABASE:
            OUTAGES.failed(exc, doing="streaming images")
            error = ApiError.unavailable(DATABASE_AWAY, retry_after=OUTAGE_RETRY_AFTER)
        else:
            logger.exception("Streaming the images of jobs %s failed", ids)
            error = ApiError(500, "The images could not be sent.", type="server_error", code="stream_failed")
        yield _sse({"type": "error", **error.body})


KEEP_ALIVE = b": waiting\n\n"


async def _within(waiting, seconds: float) -> bool:
    """Whether `waiting` ended within `seconds` (it is cancelled if not)."""
    try:
        await asyncio.wait_for(waiting, seconds)
    except TimeoutError:
        return False
    return True


def _running_preview(job_id: int, *, seen) -> tuple[ImageJob | None, tuple[Any, str] | None]:
    """The job, and, while it runs, its newest preview of this run as (when, PNG in
    base64) when that is not the one `seen`. The worker keeps a small JPEG; the events
    say PNG, so it is turned into one (a few kB)."""
    job = ImageJob.objects.filter(pk=job_id).select_related("preview").first()
    if job is None or job.status != ImageJob.Status.PROCESSING:
        return job, None
    preview = getattr(job, "preview", None)
    if preview is None or preview.updated_at == seen or (job.started_at and preview.updated_at < job.started_at):
        return job, None
    buffer = io.BytesIO()
    Image.open(io.BytesIO(base64.b64decode(preview.image.partition(",")[2]))).save(buffer, format="PNG")
    return job, (preview.updated_at, base64.b64encode(buffer.getvalue()).decode("ascii"))


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "imagegen"}


@api_view(ApiError)
async def models(request: HttpRequest):
    """GET /v1/models: the registry."""
    _method(request, "GET")
    await _authenticate(request)
    return JsonResponse({"object": "list", "data": [_model(name) for name in get_registry().names()]})


@api_view(ApiError)
async def model(request: HttpRequest, model_id: str):
    """GET /v1/models/{id}: one model of the registry."""
    _method(request, "GET")
    await _authenticate(request)
    if model_id not in get_registry():
        raise ApiError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
    return JsonResponse(_model(model_id))


@api_view(ApiError)
async def not_found(request: HttpRequest, rest: str = ""):
    raise ApiError(404, f"Unknown API path {request.path}.", code="unknown_url")


# --- Image links -------------------------------------------------------------------


def image_url_path(job: ImageJob) -> str:
    """A link to the job's image that only works for IMAGEGEN_API_URL_SECONDS (signed)."""
    token = signing.dumps({"job": job.pk, "owner": job.owner_id}, salt=URL_SALT, compress=True)
    return reverse("api_openai:image", args=[token])


def image(request: HttpRequest, token: str):
    """The image behind a signed link; an unknown, altered or expired link is a 404."""
    try:
        signed = signing.loads(token, salt=URL_SALT, max_age=settings.IMAGEGEN_API_URL_SECONDS)
    except signing.BadSignature:
        raise Http404("This link is not valid or has expired.") from None
    job = ImageJob.objects.filter(pk=signed["job"], owner_id=signed["owner"], status=ImageJob.Status.COMPLETE).first()
    if job is None or not job.image:
        raise Http404("No image for this link.")
    response = FileResponse(job.image.open("rb"), content_type="image/png", filename=f"imagegen-{job.pk}.png")
    response["Cache-Control"] = "private, max-age=3600"
    return response
