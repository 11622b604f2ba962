"""The AUTOMATIC1111 API (`/sdapi/v1/...`): what the `webuiapi` package and Open WebUI's
"automatic1111" image engine use, answered from the one global queue, per user.

Authentication is HTTP Basic with the user name and an API key as the password (what
A1111's `--api-auth`, webuiapi's `set_auth` and Open WebUI's "API Auth" send). Errors
have A1111's shapes: `{"error", "detail", "body", "errors"}`, and FastAPI's
`{"detail": [{"loc", "msg", "type"}]}` for bad input, with status 400 as every bad
request to Imagegen gets (A1111 itself answers that shape with 422).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from PIL import Image, ImageOps

from generation import selectors
from generation.api import ApiFailure, api_view
from generation.api import jobs as api_jobs
from generation.api.auth import api_key_authenticate, basic_credentials
from generation.api.waiting import run_db, wait_for_jobs
from generation.models import ApiKey, ApiOptions, ImageJob, JobPreview
from generation.pipeline import SCHEDULERS
from generation.registry import get_registry
from generation.request import DEFAULT_SCHEDULER, IMG2IMG, INPAINT
from generation.services import JobRefused
from generation.uploads import MAX_SIDE, WHITE, mask_from, png_bytes, read_base64_image

IMAGES_MAX = 8
# Our form's fields, by the name an A1111 request calls them.
FIELD_NAMES = {
    "guidance": "cfg_scale",
    "scheduler": "sampler_name",
    "model": "sd_model_checkpoint",
    "strength": "denoising_strength",
    "image": "init_images",
}
# A1111 1.9+ names a sampler and a noise schedule together ("DPM++ 2M Karras"); we run
# each sampler with its default schedule.
SCHEDULE_SUFFIXES = (" karras", " exponential", " sgm uniform", " uniform", " automatic")


class ApiError(ApiFailure):
    """An error in the shapes A1111's FastAPI answers with: `{"detail": [...]}` for bad
    input, else `{"error", "detail", "body", "errors"}`."""

    def __init__(self, status: int, detail: Any, *, error: str = "HTTPException", headers: dict | None = None):
        if status == BAD_INPUT:
            body: dict[str, Any] = {"detail": detail}
        else:
            body = {"error": error, "detail": detail, "body": "", "errors": ""}
        super().__init__(status, body, message=str(detail), headers=headers)

    @classmethod
    def unavailable(cls, message: str, *, retry_after: int) -> ApiError:
        return cls(503, message, headers={"Retry-After": str(retry_after)})


BAD_INPUT = 400


def invalid(field: str, message: str) -> ApiError:
    return ApiError(BAD_INPUT, [{"loc": ["body", field], "msg": message, "type": "value_error"}])


def _method(request: HttpRequest, *allowed: str) -> None:
    if request.method not in allowed:
        raise ApiError(405, "Method Not Allowed")


async def _authenticate(request: HttpRequest) -> ApiKey:
    username, password = basic_credentials(request.headers.get("Authorization", ""))
    api_key = await run_db(api_key_authenticate, key=password, username=username) if password else None
    if api_key is None:
        raise ApiError(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})
    return api_key


def _json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise invalid("body", "The body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise invalid("body", "The body must be a JSON object.")
    return body


# --- Models and samplers -----------------------------------------------------------


def model_hash(name: str) -> str:
    """A stable SHA-256 for a registry entry: of its name and source, not of its file
    (hashing a multi-gigabyte checkpoint on every listing would cost seconds)."""
    source = get_registry().get(name).source
    return hashlib.sha256(f"{name}\n{source}".encode()).hexdigest()


def resolve_model(value: Any) -> str | None:
    """A registry name from what a client sends: the name in any case, or A1111's
    "name.safetensors [hash]" title."""
    if not isinstance(value, str):
        return None
    text = re.sub(r"\s*\[[0-9a-fA-F]+\]\s*$", "", value).strip()
    text = re.sub(r"\.(safetensors|ckpt)$", "", text, flags=re.IGNORECASE)
    by_lower = {name.lower(): name for name in get_registry().names()}
    return by_lower.get(text.lower())


def resolve_sampler(value: Any) -> str | None:
    """Our scheduler key from an A1111 sampler name ("Euler a", "DPM++ 2M Karras", "euler")."""
    if value in (None, ""):
        return DEFAULT_SCHEDULER
    if not isinstance(value, str):
        return None
    by_name = {}
    for key, (_, label, _) in SCHEDULERS.items():
        by_name[label.lower()] = key
        by_name[key] = key
    name = value.strip().lower()
    if name in by_name:
        return by_name[name]
    for suffix in SCHEDULE_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in by_name:
            return by_name[name[: -len(suffix)]]
    return None


def user_model(owner) -> str:
    """The user's default model through this API (set with POST options), else the service's."""
    chosen = ApiOptions.objects.filter(owner=owner).values_list("sd_model_checkpoint", flat=True).first()
    return chosen if chosen and chosen in get_registry() else settings.IMAGEGEN_DEFAULT_MODEL


def user_model_set(*, owner, model: str) -> None:
    ApiOptions.objects.update_or_create(owner=owner, defaults={"sd_model_checkpoint": model})


def _int(body: dict, field: str, default: int) -> int:
    value = body.get(field, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise invalid(field, f"{field}: a whole number.")
    return int(value)


def parse_txt2img(body: dict[str, Any]) -> dict[str, Any]:
    """What we honour of a txt2img request; every other field is accepted and ignored."""
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise invalid("prompt", "prompt: a string.")
    negative = body.get("negative_prompt") or ""
    if not isinstance(negative, str):
        raise invalid("negative_prompt", "negative_prompt: a string.")
    batch_size, n_iter = _int(body, "batch_size", 1), _int(body, "n_iter", 1)
    if batch_size < 1 or n_iter < 1 or batch_size * n_iter > IMAGES_MAX:
        raise invalid("batch_size", f"batch_size x n_iter: 1 to {IMAGES_MAX} images.")
    sampler = resolve_sampler(body.get("sampler_name") or body.get("sampler_index"))
    if sampler is None:
        names = ", ".join(label for _, label, _ in SCHEDULERS.values())
        raise invalid("sampler_name", f"sampler_name: one of {names}.")
    seed = body.get("seed", -1)
    params: dict[str, Any] = {
        "negative_prompt": negative,
        # What the body leaves out takes the model's family's defaults, as in the chat.
        "steps": body.get("steps"),
        "guidance": body.get("cfg_scale"),
        "width": body.get("width"),
        "height": body.get("height"),
        "scheduler": sampler,
    }
    if seed not in (None, -1, "-1", ""):
        params["seed"] = seed
    overrides = body.get("override_settings") or {}
    if not isinstance(overrides, dict):
        raise invalid("override_settings", "override_settings: an object.")
    checkpoint = overrides.get("sd_model_checkpoint")
    model = None
    if checkpoint not in (None, ""):
        model = resolve_model(checkpoint)
        if model is None:
            raise invalid("override_settings", f"sd_model_checkpoint: unknown model {checkpoint!r}.")
    return {"prompt": prompt, "count": batch_size * n_iter, "params": params, "model": model}


def validation_error(exc: ValidationError) -> ApiError:
    errors = exc.message_dict if hasattr(exc, "error_dict") else {"prompt": exc.messages}
    detail = [
        {"loc": ["body", FIELD_NAMES.get(field, field)], "msg": message, "type": "value_error"}
        for field, messages in errors.items()
        for message in messages
    ]
    return ApiError(BAD_INPUT, detail)


def _submit(api_key: ApiKey, asked: dict, key: str | None, attach: bool) -> list[ImageJob]:
    model = asked["model"] or user_model(api_key.owner)
    return api_jobs.api_jobs_submit(
        api_key=api_key,
        prompt=asked["prompt"],
        count=asked["count"],
        key=key,
        attach=attach,
        model=model,
        **asked["params"],
    )


def _info(results: list[api_jobs.Result], asked: dict) -> dict[str, Any]:
    jobs = [result.job for result in results]
    made = [result.job for result in results if result.png is not None]
    first = jobs[0]
    seeds = [job.seed for job in made] or [first.seed]
    return {
        "prompt": first.prompt,
        "all_prompts": [job.prompt for job in made],
        "negative_prompt": first.negative_prompt,
        "all_negative_prompts": [job.negative_prompt for job in made],
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(seeds),
        "subseed_strength": 0,
        "width": first.width,
        "height": first.height,
        "sampler_name": SCHEDULERS[first.scheduler][1],
        "cfg_scale": first.guidance,
        "steps": first.steps,
        "batch_size": asked["batch_size"],
        "n_iter": asked["n_iter"],
        "restore_faces": False,
        "sd_model_name": first.model,
        "sd_model_hash": model_hash(first.model)[:10] if first.model in get_registry() else None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": first.strength,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": [api_jobs.job_infotext(job) for job in made],
        "styles": [],
        "job_timestamp": timezone.localtime(first.created_at).strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "mask_blur": first.mask_blur if first.kind == INPAINT else None,
        "version": "imagegen",
        "job_ids": [job.pk for job in jobs],
    }


# --- Views ---------------------------------------------------------------------------


@api_view(ApiError)
async def txt2img(request: HttpRequest):
    """POST /sdapi/v1/txt2img: queue batch_size x n_iter images and answer when they are made."""
    _method(request, "POST")
    api_key = await _authenticate(request)
    body = _json_body(request)
    return await _queue_and_answer(request, api_key, body, parse_txt2img(body), endpoint="a1111.txt2img")


@api_view(ApiError)
async def img2img(request: HttpRequest):
    """POST /sdapi/v1/img2img: the first of `init_images` changed as the prompt says (with
    `mask`, inpainted), batch_size x n_iter times; answered as txt2img is."""
    _method(request, "POST")
    api_key = await _authenticate(request)
    body = _json_body(request)
    asked = parse_txt2img(body)
    asked["params"].update(await run_db(parse_img2img, body, asked["params"]))
    return await _queue_and_answer(request, api_key, body, asked, endpoint="a1111.img2img")


async def _queue_and_answer(request: HttpRequest, api_key: ApiKey, body: dict, asked: dict, *, endpoint: str):
    idempotency_key = request.headers.get("Idempotency-Key", "").strip()
    key = api_jobs.request_key(endpoint=endpoint, idempotency_key=idempotency_key) if idempotency_key else None
    try:
        jobs = await run_db(_submit, api_key, asked, key, bool(idempotency_key))
    except ValidationError as exc:
        raise validation_error(exc) from None
    except JobRefused as exc:
        if exc.refusal.unavailable:
            raise ApiError.unavailable(exc.refusal.message, retry_after=exc.refusal.retry_after) from None
        raise ApiError(429, exc.refusal.message, headers={"Retry-After": str(exc.refusal.retry_after)}) from None
    ids = [job.pk for job in jobs]
    await wait_for_jobs(ids)
    results = await run_db(api_jobs.results, ids)
    made = [result for result in results if result.png is not None]
    failed = [result.job for result in results if result.job.status == ImageJob.Status.ERROR]
    if not made and failed:
        raise ApiError(500, failed[0].error or "The image could not be made.", error="RuntimeError")
    if not results:
        raise ApiError(409, "The images were deleted before they were made.", error="RuntimeError")
    # Interrupted (cancelled) images are left out, as A1111 leaves out what it did not make.
    echo = {**body, "batch_size": body.get("batch_size", 1), "n_iter": body.get("n_iter", 1)}
    if "init_images" in body and not body.get("include_init_images"):
        echo.update(init_images=None, mask=None)  # A1111 sends the inputs back only when asked
    info = _info(results, {"batch_size": echo["batch_size"], "n_iter": echo["n_iter"]})
    images = [base64.b64encode(result.png).decode("ascii") for result in made]
    return JsonResponse(
        {
            "images": images if body.get("send_images", True) is not False else [],
            "parameters": echo,
            "info": json.dumps(info),
        }
    )


# A1111's resize modes: how the source is brought to the requested size.
JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL, LATENT_RESIZE = 0, 1, 2, 3


def parse_img2img(body: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """What an img2img request adds to txt2img's: the source, the mask and how to use them.

    `inpainting_fill` and `inpaint_full_res` are accepted; the masked area is always
    repainted from the source ("original") over the whole picture.
    """
    images = body.get("init_images")
    if not isinstance(images, list) or not images:
        raise invalid("init_images", "init_images: a list with one base64-encoded image.")
    source = _image_field(images[0], "init_images")
    edit: dict[str, Any] = {"kind": IMG2IMG}
    strength = body.get("denoising_strength", 0.75)
    edit["strength"] = 0.75 if strength is None else strength
    blur = body.get("mask_blur", 4)
    edit["mask_blur"] = 4 if blur is None else blur
    resize_mode = _int(body, "resize_mode", JUST_RESIZE)
    if resize_mode not in (JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL, LATENT_RESIZE):
        raise invalid("resize_mode", "resize_mode: 0 (just resize), 1 (crop and resize), 2 (resize and fill) or 3.")
    mask = None
    if body.get("mask"):
        picture = _image_field(body["mask"], "mask")
        try:
            mask = mask_from(picture, size=source.size, marks=WHITE)
        except ValidationError as exc:
            raise invalid("mask", " ".join(exc.messages)) from None
        if body.get("inpainting_mask_invert"):
            mask = ImageOps.invert(mask)
        edit["kind"] = INPAINT
    width, height = params.get("width"), params.get("height")
    if width and height and resize_mode in (CROP_AND_RESIZE, RESIZE_AND_FILL):
        size = (int(width), int(height))
        if resize_mode == CROP_AND_RESIZE:
            source = ImageOps.fit(source, size, Image.Resampling.LANCZOS)
            mask = ImageOps.fit(mask, size, Image.Resampling.NEAREST) if mask is not None else None
        else:
            source = ImageOps.pad(source.convert("RGB"), size, Image.Resampling.LANCZOS)
            mask = ImageOps.pad(mask, size, Image.Resampling.NEAREST, color=0) if mask is not None else None
    return {**edit, "source": source, "mask": mask}


def _image_field(value: Any, field: str) -> Image.Image:
    try:
        return read_base64_image(value, label=field)
    except ValidationError as exc:
        raise invalid(field, " ".join(exc.messages)) from None


# --- Extras: upscaling without the model -------------------------------------------------

# The upscalers `extra-single-image` runs: resampling on the web server, in a moment.
UPSCALERS = {"None": None, "Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}


@api_view(ApiError)
async def upscalers(request: HttpRequest):
    _method(request, "GET")
    await _authenticate(request)
    rows = [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4} for name in UPSCALERS]
    return JsonResponse(rows, safe=False)


@api_view(ApiError)
async def extra_single_image(request: HttpRequest):
    """POST /sdapi/v1/extra-single-image: the image enlarged by `upscaling_resize` (or to
    `upscaling_resize_w` x `_h` with resize_mode 1) with `upscaler_1`; no queue, no model."""
    _method(request, "POST")
    await _authenticate(request)
    body = _json_body(request)
    image = _image_field(body.get("image"), "image")
    name = body.get("upscaler_1") or "None"
    if name not in UPSCALERS:
        raise invalid("upscaler_1", f"upscaler_1: one of {', '.join(UPSCALERS)}.")
    if _int(body, "resize_mode", 0) == 1:
        size = (_int(body, "upscaling_resize_w", 512), _int(body, "upscaling_resize_h", 512))
    else:
        factor = body.get("upscaling_resize", 2)
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not 1 <= factor <= 8:
            raise invalid("upscaling_resize", "upscaling_resize: a factor from 1 to 8.")
        size = (round(image.width * factor), round(image.height * factor))
    if min(size) < 1 or max(size) > MAX_SIDE:
        raise invalid(
            "upscaling_resize", f"The upscaled image would be {size[0]}x{size[1]}; at most {MAX_SIDE} a side."
        )
    resample = UPSCALERS[name]
    if resample is not None and size != image.size:
        if _int(body, "resize_mode", 0) == 1 and body.get("upscaling_crop", True):
            image = ImageOps.fit(image, size, resample)
        else:
            image = image.resize(size, resample)
    png = await run_db(png_bytes, image)
    info = f"Postprocess upscale to: {image.width}x{image.height}, Postprocess upscaler: {name}"
    return JsonResponse({"html_info": f"<p>{info}</p>", "image": base64.b64encode(png).decode("ascii")})


def _options(owner) -> dict[str, Any]:
    model = user_model(owner)
    return {
        "sd_model_checkpoint": model,
        "sd_checkpoint_hash": model_hash(model),
        "samples_format": "png",
        "CLIP_stop_at_last_layers": 1,
        "sd_vae": "Automatic",
    }


@api_view(ApiError)
async def options(request: HttpRequest):
    """GET: the caller's options. POST: a model named there becomes the caller's default
    (never a switch for everybody); other keys are accepted and ignored."""
    _method(request, "GET", "POST")
    api_key = await _authenticate(request)
    if request.method == "GET":
        return JsonResponse(await run_db(_options, api_key.owner))
    body = _json_body(request)
    if body.get("sd_model_checkpoint") not in (None, ""):
        model = resolve_model(body["sd_model_checkpoint"])
        if model is None:
            raise invalid("sd_model_checkpoint", f"Unknown model {body['sd_model_checkpoint']!r}.")
        await run_db(user_model_set, owner=api_key.owner, model=model)
    return JsonResponse(None, safe=False)


@api_view(ApiError)
async def sd_models(request: HttpRequest):
    _method(request, "GET")
    await _authenticate(request)
    registry = get_registry()
    rows = []
    for name in registry.names():
        digest = model_hash(name)
        source = registry.get(name).source
        rows.append(
            {
                "title": name,
                "model_name": name,
                "hash": digest[:10],
                "sha256": digest,
                "filename": source,
                "config": None,
            }
        )
    return JsonResponse(rows, safe=False)


@api_view(ApiError)
async def samplers(request: HttpRequest):
    _method(request, "GET")
    await _authenticate(request)
    rows = [{"name": label, "aliases": [key], "options": {}} for key, (_, label, _) in SCHEDULERS.items()]
    return JsonResponse(rows, safe=False)


@api_view(ApiError)
async def schedulers(request: HttpRequest):
    """Each sampler runs with its own default noise schedule: one choice, "automatic"."""
    _method(request, "GET")
    await _authenticate(request)
    rows = [{"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1, "need_inner_model": False}]
    return JsonResponse(rows, safe=False)


@api_view(ApiError)
async def scripts(request: HttpRequest):
    _method(request, "GET")
    await _authenticate(request)
    return JsonResponse({"txt2img": [], "img2img": []})


def progress_of(owner, *, with_image: bool) -> dict[str, Any]:
    """The caller's own running job as A1111 reports its one: zeros when nothing runs."""
    pending = list(ImageJob.objects.filter(owner=owner, status__in=ImageJob.PENDING).order_by())
    running = sorted((job for job in pending if job.status == ImageJob.Status.PROCESSING), key=lambda j: j.sequence)
    state = {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": "",
        "job_count": len(pending),
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }
    if not running:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    job = running[0]
    preview = JobPreview.objects.filter(job=job).values("step", "image").first()
    steps = job.work_steps  # an edit runs its strength's share of the steps
    step = max(job.progress * steps // 100, preview["step"] if preview else 0)
    state.update(
        job=f"job({job.pk})",
        job_timestamp=(job.started_at or job.created_at).astimezone(UTC).strftime("%Y%m%d%H%M%S"),
        sampling_step=step,
        sampling_steps=steps,
    )
    image = None
    if with_image and preview:
        image = preview["image"].partition(",")[2]  # A1111 sends bare base64, no data: URL
    return {
        "progress": round(step / max(steps, 1), 4),
        "eta_relative": float(selectors.job_remaining_seconds(job=job)),
        "state": state,
        "current_image": image,
        "textinfo": None,
    }


@api_view(ApiError)
async def progress(request: HttpRequest):
    """GET /sdapi/v1/progress: the caller's running job, its step, ETA and live preview."""
    _method(request, "GET")
    api_key = await _authenticate(request)
    skip_image = request.GET.get("skip_current_image", "false").lower() in ("1", "true", "yes")
    return JsonResponse(await run_db(progress_of, api_key.owner, with_image=not skip_image))


def interrupt_running(owner) -> list[int]:
    """Cancel the owner's running job and, as A1111 stops a whole request, the images of
    the same prompt still waiting; their other prompts stay queued."""
    running = list(ImageJob.objects.filter(owner=owner, status=ImageJob.Status.PROCESSING))
    rest = ImageJob.objects.filter(
        owner=owner, status=ImageJob.Status.QUEUED, message_id__in=[job.message_id for job in running]
    )
    cancelled = []
    # The waiting images first, so the worker does not start one of them meanwhile.
    for job in [*rest, *running]:
        if api_jobs.api_job_cancel(job=job):
            cancelled.append(job.pk)
    return cancelled


@api_view(ApiError)
async def interrupt(request: HttpRequest):
    """POST /sdapi/v1/interrupt: stops the caller's running request, nobody else's."""
    _method(request, "POST")
    api_key = await _authenticate(request)
    await run_db(interrupt_running, api_key.owner)
    return JsonResponse({})


@api_view(ApiError)
async def not_found(request: HttpRequest, rest: str = ""):
    raise ApiError(404, "Not Found")
