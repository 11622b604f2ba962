"""The OpenAI Images API (`/v1/...`): what the `openai` package and Open WebUI's
"openai" image engine send, answered from the one global queue.

Authentication is `Authorization: Bearer <key>`. Errors have OpenAI's shape:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, HttpRequest, JsonResponse
from django.urls import reverse

from generation.api import ApiFailure, api_view
from generation.api import jobs as api_jobs
from generation.api.auth import api_key_authenticate, bearer_key
from generation.api.waiting import run_db, wait_for_jobs
from generation.forms import VARY_STRONG
from generation.models import ApiKey, ImageJob
from generation.registry import get_registry
from generation.request import IMG2IMG, INPAINT
from generation.services import JobRefused
from generation.uploads import MAX_UPLOAD_BYTES, TRANSPARENT, mask_from, read_image

N_MAX = 8
RESPONSE_FORMATS = ("b64_json", "url")
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


def parse_generation(body: dict[str, Any]) -> dict[str, Any]:
    """The request's fields we honour, checked; the rest is ignored."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, "prompt: a non-empty string is required.", param="prompt")
    n = body.get("n", 1)
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= N_MAX:
        raise ApiError(400, f"n: a whole number from 1 to {N_MAX}.", param="n")
    response_format = body.get("response_format") or "b64_json"
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(400, "response_format: 'b64_json' or 'url'.", param="response_format")
    size = body.get("size") or "auto"
    params: dict[str, Any] = {"model": model_name(body.get("model"))}
    if size != "auto":
        width, sep, height = str(size).partition("x")
        if not (sep and width.isdigit() and height.isdigit()):
            raise ApiError(400, "size: 'WIDTHxHEIGHT' (such as '512x512') or 'auto'.", param="size")
        params.update(width=int(width), height=int(height))
    return {"prompt": prompt, "n": n, "response_format": response_format, "params": params}


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
    return await _queue_and_answer(request, api_key, asked, key=key)


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
    return await _queue_and_answer(request, api_key, asked, key=key)


@api_view(ApiError)
async def images_variations(request: HttpRequest):
    """POST /v1/images/variations (multipart): n variations of the image (its composition
    kept, a new seed each)."""
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
    """The form's fields (numbers as numbers) and its files by name (`image[]` is `image`)."""
    if not request.content_type.startswith("multipart/form-data"):
        raise ApiError(400, "Send the image as multipart/form-data (a file field named 'image').")
    fields: dict[str, Any] = {}
    for name, value in request.POST.items():
        value = value.strip()
        fields[name] = int(value) if name == "n" and value.isdigit() else value
    uploads: dict[str, list[bytes]] = {}
    for name in request.FILES:
        for upload in request.FILES.getlist(name):
            if upload.size > MAX_UPLOAD_BYTES:
                raise ApiError(400, f"{name}: at most {MAX_UPLOAD_BYTES // 2**20} MB.", param=name.rstrip("[]"))
            uploads.setdefault(name.removesuffix("[]"), []).append(upload.read())
    return fields, uploads


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


async def _queue_and_answer(request: HttpRequest, api_key: ApiKey, asked: dict[str, Any], *, key: str):
    """Queue what was asked, wait for the images, and answer as the Images API does."""
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
    await wait_for_jobs(ids)
    results = await run_db(api_jobs.results, ids)
    made = [result for result in results if result.png is not None]
    if not made:
        failed = [result.job for result in results if result.job.status == ImageJob.Status.ERROR]
        if failed:
            error = failed[0].error or "The image could not be made."
            raise ApiError(500, error, type="server_error", code="generation_failed")
        # Cancelled (from the chat, the admin) or deleted with its conversation.
        raise ApiError(409, "The image was cancelled before it was made.", type="server_error", code="cancelled")
    data = []
    for result in made:
        item: dict[str, Any] = {"revised_prompt": result.job.prompt}
        if asked["response_format"] == "url":
            item["url"] = request.build_absolute_uri(image_url_path(result.job))
        else:
            item["b64_json"] = base64.b64encode(result.png).decode("ascii")
        data.append(item)
    return JsonResponse({"created": int(time.time()), "data": data})


@api_view(ApiError)
async def models(request: HttpRequest):
    """GET /v1/models: the registry."""
    _method(request, "GET")
    await _authenticate(request)
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "imagegen"} for name in get_registry().names()]
    return JsonResponse({"object": "list", "data": data})


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
