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
import io
import json
import re
from datetime import UTC
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from PIL import ExifTags, Image, ImageOps

from generation import selectors, services
from generation.api import ApiFailure, api_view
from generation.api import jobs as api_jobs
from generation.api.a1111_options import DEFAULTS, IMAGE_FORMATS
from generation.api.auth import api_key_authenticate, basic_credentials
from generation.api.waiting import run_db, wait_for_jobs
from generation.families import DISCRETE_SCHEDULERS, SAMPLER_NAMES, SCHEDULES
from generation.forms import CLIP_SKIP_MAX, CLIP_SKIP_MIN, COUNT_MAX, SEED_MAX
from generation.loras import take_prompt_tags
from generation.models import ApiKey, ApiOptions, ImageJob, JobPreview, Worker
from generation.registry import get_loras, get_registry, model_family
from generation.request import DEFAULT_SCHEDULE, DEFAULT_SCHEDULER, IMG2IMG, INPAINT
from generation.services import JobRefused
from generation.uploads import MAX_SIDE, WHITE, mask_from, png_bytes, read_base64_image

IMAGES_MAX = COUNT_MAX  # the chat's images per prompt
EXIF_UNICODE = b"UNICODE\0"  # the EXIF UserComment's prefix for UTF-16 text
# Our form's fields, by the name an A1111 request calls them.
FIELD_NAMES = {
    "guidance": "cfg_scale",
    "scheduler": "sampler_name",
    "schedule": "scheduler",
    "model": "sd_model_checkpoint",
    "strength": "denoising_strength",
    "image": "init_images",
    "loras": "prompt",  # where A1111 clients write them
}
# A1111's noise schedules as its GET /schedulers lists them: key -> (aliases, default
# rho, whether it needs the model's own sigmas); their labels are `SCHEDULES`'.
SCHEDULE_ROWS: dict[str, tuple[list[str] | None, float, bool]] = {
    "automatic": (None, -1, False),
    "karras": (None, 7.0, False),
    "exponential": (None, -1, False),
    "sgm_uniform": (["SGMUniform"], -1, True),
}
# A schedule by its key, label or alias, lower-cased ("sgm uniform", "sgmuniform").
SCHEDULE_NAMES = {
    name.lower(): key for key, (label, _) in SCHEDULES.items() for name in (key, label, *(SCHEDULE_ROWS[key][0] or ()))
}
# A1111 1.9+ still takes a sampler and a noise schedule named together ("DPM++ 2M
# Karras"), as older versions listed them, and their aliases' "_ka" and "_exp" endings
# ("k_dpmpp_2m_ka"): the ending -> our schedule key.
SCHEDULE_SUFFIXES = {
    **{f" {name}": key for name, key in SCHEDULE_NAMES.items()},
    "_ka": "karras",
    "_exp": "exponential",
}
# A sampler by its A1111 name, its aliases or our key, lower-cased. A key names the same
# sampler in every family (the flow families' are among the UNet families').
SAMPLER_KEYS = {
    name.lower(): key for key, sampler in DISCRETE_SCHEDULERS.items() for name in (sampler.label, key, *sampler.aliases)
}


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


def resolve_sampler(value: Any) -> tuple[str, str | None] | None:
    """Our sampler key from an A1111 sampler name in any case ("Euler a", "k_euler_a",
    "euler_a"), with the schedule the name ends with, if it does ("DPM++ 2M Karras" ->
    ("dpmpp_2m", "karras")); None for a sampler we do not know."""
    if value in (None, ""):
        return DEFAULT_SCHEDULER, None
    if not isinstance(value, str):
        return None
    name = value.strip().lower()
    if name in SAMPLER_KEYS:
        return SAMPLER_KEYS[name], None
    for suffix, schedule in SCHEDULE_SUFFIXES.items():
        if name.endswith(suffix) and name[: -len(suffix)] in SAMPLER_KEYS:
            return SAMPLER_KEYS[name[: -len(suffix)]], schedule
    return None


def resolve_schedule(value: Any) -> str | None:
    """Our schedule key from A1111's `scheduler` field ("Karras", "karras", "SGM Uniform",
    "sgm_uniform"); None for one we do not know."""
    if value in (None, ""):
        return DEFAULT_SCHEDULE
    return SCHEDULE_NAMES.get(value.strip().lower()) if isinstance(value, str) else None


def registered_samplers() -> list[str]:
    """The samplers of the registered models' families (their union), in A1111's order."""
    keys = {key for name in get_registry().names() for key in model_family(name).schedulers}
    return [key for key in SAMPLER_NAMES if key in keys]


def registered_schedules() -> list[str]:
    """The schedules any sampler of a registered model takes."""
    keys = {
        schedule
        for name in get_registry().names()
        for sampler in model_family(name).schedulers.values()
        for schedule in sampler.schedules
    }
    return [key for key in SCHEDULES if key in keys]


def user_model(owner) -> str:
    """The user's default model through this API (set with POST options), else the service's."""
    return _user_options_row(owner)[1]


# --- Options: a user's own, and a request's override_settings ---------------------------

# What a request is made with when neither the user's options nor the request say.
SETTINGS_DEFAULTS = {"clip_skip": 1, "noise_seed_delta": 0, "samples_format": "png", "jpeg_quality": 80}
# Options that are facts about the model, answered by GET, never stored as written.
DERIVED_OPTIONS = ("sd_model_checkpoint", "sd_checkpoint_hash")
OPTIONS_MAX_BYTES = 256 * 1024  # what one user's options may hold (A1111's are about 20 KB)


def _whole(value: Any, low: int, high: int) -> int:
    # The range first: NaN and infinity (which JSON may carry) fail it before int() sees them.
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high or value % 1:
        raise ValueError(f"a whole number from {low} to {high}.")
    return int(value)


def _samples_format(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in IMAGE_FORMATS:
        raise ValueError(f"one of {', '.join(IMAGE_FORMATS)}.")
    return value.lower()


def _model(value: Any) -> str:
    model = resolve_model(value)
    if model is None:
        raise ValueError(f"unknown model {value!r}.")
    return model


# The options Imagegen honours: option -> (what a request calls it, its check).
HONOURED_OPTIONS = {
    "sd_model_checkpoint": ("model", _model),
    "CLIP_stop_at_last_layers": ("clip_skip", lambda value: _whole(value, CLIP_SKIP_MIN, CLIP_SKIP_MAX)),
    "eta_noise_seed_delta": ("noise_seed_delta", lambda value: _whole(value, 0, SEED_MAX)),
    "samples_format": ("samples_format", _samples_format),
    "jpeg_quality": ("jpeg_quality", lambda value: _whole(value, 1, 100)),
}


def clean_settings(values: dict[str, Any], *, field: str | None = None) -> dict[str, Any]:
    """The honoured options among `values`, checked, by the name a request gives them
    (`model`, `clip_skip`, `noise_seed_delta`, `samples_format`, `jpeg_quality`).

    One bad value refuses them all: an ApiError (400) under `field` (default: the
    option's own name). An empty value (None, "") is no value, as A1111 takes it.
    """
    cleaned = {}
    for option, (name, check) in HONOURED_OPTIONS.items():
        value = values.get(option)
        if value in (None, ""):
            continue
        try:
            cleaned[name] = check(value)
        except ValueError as exc:
            raise invalid(field or option, f"{option}: {exc}") from None
    return cleaned


def _stored_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The honoured options a user stored; one that no longer passes its check (a model
    removed since) is left out, and its default applies."""
    stored = {}
    for option, value in options.items():
        if option in HONOURED_OPTIONS and option not in DERIVED_OPTIONS:
            try:
                stored.update(clean_settings({option: value}))
            except ApiError:
                continue
    return stored


def _user_options_row(owner) -> tuple[dict[str, Any], str]:
    """(the options a user wrote, their model: the one they chose, else the service's)."""
    row = ApiOptions.objects.filter(owner=owner).values("options", "sd_model_checkpoint").first() or {}
    chosen = row.get("sd_model_checkpoint")
    model = chosen if chosen and chosen in get_registry() else settings.IMAGEGEN_DEFAULT_MODEL
    return row.get("options") or {}, model


def request_settings(owner, overrides: dict[str, Any]) -> dict[str, Any]:
    """What a request is made with: the defaults, under the user's options, under the
    request's own `override_settings` (already checked); `model` included."""
    options, model = _user_options_row(owner)
    return {**SETTINGS_DEFAULTS, **_stored_settings(options), "model": model, **overrides}


def user_options(owner) -> dict[str, Any]:
    """A user's options as A1111 answers them: every default, under what the user wrote,
    with the user's model and its hash."""
    options, model = _user_options_row(owner)
    return {**DEFAULTS, **options, "sd_model_checkpoint": model, "sd_checkpoint_hash": model_hash(model)}


def user_options_update(*, owner, values: dict[str, Any], model: str | None) -> None:
    """Merge `values` (already checked) into the user's options; `model` becomes their
    default model. Under the row's lock, so two updates at once both count."""
    with transaction.atomic():
        row, _ = ApiOptions.objects.select_for_update().get_or_create(owner=owner)
        row.options = {**row.options, **{key: value for key, value in values.items() if key not in DERIVED_OPTIONS}}
        if len(json.dumps(row.options)) > OPTIONS_MAX_BYTES:
            raise invalid("body", f"Options take at most {OPTIONS_MAX_BYTES // 1024} KB a user; these would not fit.")
        if model is not None:
            row.sd_model_checkpoint = model
        row.save()


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
    resolved = resolve_sampler(body.get("sampler_name") or body.get("sampler_index"))
    if resolved is None:
        names = ", ".join(SAMPLER_NAMES[key] for key in registered_samplers())
        raise invalid("sampler_name", f"sampler_name: one of {names}.")
    sampler, named_schedule = resolved
    # A schedule named with the sampler wins over the `scheduler` field, as in A1111.
    schedule = named_schedule or resolve_schedule(body.get("scheduler"))
    if schedule is None:
        names = ", ".join(SCHEDULES[key][0] for key in registered_schedules())
        raise invalid("scheduler", f"scheduler: one of {names}.")
    seed = body.get("seed", -1)
    params: dict[str, Any] = {
        "negative_prompt": negative,
        # What the body leaves out takes the model's family's defaults, as in the chat.
        "steps": body.get("steps"),
        "guidance": body.get("cfg_scale"),
        "width": body.get("width"),
        "height": body.get("height"),
        "scheduler": sampler,
        "schedule": schedule,
    }
    if seed not in (None, -1, "-1", ""):
        params["seed"] = seed
    overrides = body.get("override_settings") or {}
    if not isinstance(overrides, dict):
        raise invalid("override_settings", "override_settings: an object.")
    # The options this request alone is made with (see `request_settings`).
    overridden = clean_settings(overrides, field="override_settings")
    model = overridden.pop("model", None)
    return {"prompt": prompt, "count": batch_size * n_iter, "params": params, "model": model, "settings": overridden}


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
    # A1111 clients ask for LoRAs in the prompt: <lora:name:weight>.
    prompt, tags = take_prompt_tags(asked["prompt"])
    if tags:
        asked["params"]["loras"] = " ".join(f"{name}:{weight.replace(' ', '')}" for name, weight in tags)
    return api_jobs.api_jobs_submit(
        api_key=api_key,
        prompt=prompt,
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
        "sampler_name": SAMPLER_NAMES.get(first.scheduler, first.scheduler),
        "scheduler": SCHEDULES[first.schedule][0] if first.schedule in SCHEDULES else first.schedule,
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
        "extra_generation_params": _extra_params(made[0] if made else first),
        "index_of_first_image": 0,
        "infotexts": [api_jobs.job_infotext(job) for job in made],
        "styles": [],
        "job_timestamp": timezone.localtime(first.created_at).strftime("%Y%m%d%H%M%S"),
        "clip_skip": first.clip_skip,
        "is_using_inpainting_conditioning": False,
        "mask_blur": first.mask_blur if first.kind == INPAINT else None,
        "version": "imagegen",
        "job_ids": [job.pk for job in jobs],
    }


def _extra_params(job: ImageJob) -> dict[str, Any]:
    """A1111's `extra_generation_params`: what the infotext says besides A1111's usual
    fields (an interrupted image: the step it stopped at)."""
    if job.stopped_at_step is None:
        return {}
    return {"Interrupted": f"step {job.stopped_at_step} of {job.work_steps}"}


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
    overrides = {**asked["settings"], **({"model": asked["model"]} if asked["model"] else {})}
    made_with = await run_db(request_settings, api_key.owner, overrides)
    asked["model"] = made_with["model"]
    asked["params"].update(clip_skip=made_with["clip_skip"], noise_seed_delta=made_with["noise_seed_delta"])
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
    # An interrupted image is there (the one of the step it stopped at); cancelled ones
    # (the images of an interrupted request that had not started) are left out, as
    # A1111 leaves out what it did not make.
    echo = {**body, "batch_size": body.get("batch_size", 1), "n_iter": body.get("n_iter", 1)}
    if "init_images" in body and not body.get("include_init_images"):
        echo.update(init_images=None, mask=None)  # A1111 sends the inputs back only when asked
    info = _info(results, {"batch_size": echo["batch_size"], "n_iter": echo["n_iter"]})
    encoded = [result.png for result in made]
    if made_with["samples_format"] != "png":
        encoded = await run_db(_encoded, encoded, made_with["samples_format"], made_with["jpeg_quality"])
    images = [base64.b64encode(data).decode("ascii") for data in encoded]
    return JsonResponse(
        {
            "images": images if body.get("send_images", True) is not False else [],
            "parameters": echo,
            "info": json.dumps(info),
        }
    )


def _encoded(pngs: list[bytes], samples_format: str, quality: int) -> list[bytes]:
    """The PNGs as A1111 sends images in another `samples_format`: with the infotext in
    the EXIF UserComment (UTF-16, as A1111 writes it with piexif)."""
    out = []
    for png in pngs:
        image = Image.open(io.BytesIO(png))
        exif = Image.Exif()
        comment = image.info.get("parameters", "").encode("utf-16-be")
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = EXIF_UNICODE + comment
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=IMAGE_FORMATS[samples_format], exif=exif, quality=quality)
        out.append(buffer.getvalue())
    return out


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


@api_view(ApiError)
async def options(request: HttpRequest):
    """GET: the caller's options, every one of A1111's with its default unless they wrote
    it. POST: the keys given are merged into the caller's own (never a change for
    anybody else), all or none: a bad value of an option Imagegen honours (the model,
    clip skip, ENSD, the image format and its quality) is a 400 and nothing is stored.
    The model named there becomes the caller's default model."""
    _method(request, "GET", "POST")
    api_key = await _authenticate(request)
    if request.method == "GET":
        return JsonResponse(await run_db(user_options, api_key.owner))
    body = _json_body(request)
    cleaned = clean_settings(body)
    await run_db(user_options_update, owner=api_key.owner, values=body, model=cleaned.get("model"))
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


def sampler_rows() -> list[dict[str, Any]]:
    """The registered models' samplers as A1111 lists its own: its aliases and our key,
    and in `options` the schedule Automatic gives it, where it has its own."""
    rows = []
    for key in registered_samplers():
        sampler = DISCRETE_SCHEDULERS[key]
        aliases = [*sampler.aliases, *([key] if key not in sampler.aliases else [])]
        options = {"scheduler": sampler.automatic} if sampler.automatic != "automatic" else {}
        rows.append({"name": sampler.label, "aliases": aliases, "options": options})
    return rows


@api_view(ApiError)
async def samplers(request: HttpRequest):
    """GET /sdapi/v1/samplers: every sampler a registered model runs (a model's family
    may run fewer: a request for another is a 400 naming those it runs)."""
    _method(request, "GET")
    await _authenticate(request)
    return JsonResponse(sampler_rows(), safe=False)


@api_view(ApiError)
async def schedulers(request: HttpRequest):
    """GET /sdapi/v1/schedulers: the noise schedules the registered models' samplers take."""
    _method(request, "GET")
    await _authenticate(request)
    rows = []
    for key in registered_schedules():
        aliases, rho, inner = SCHEDULE_ROWS[key]
        rows.append(
            {"name": key, "label": SCHEDULES[key][0], "aliases": aliases, "default_rho": rho, "need_inner_model": inner}
        )
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
        interrupted=job.interrupt_requested,
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


def interrupt_running(owner, *, whole_request: bool = True) -> list[int]:
    """Stop the owner's running images as A1111 stops its one: each stops at its next
    step and ends, complete, with the image of that step (what the waiting txt2img
    answers). With `whole_request` (A1111's interrupt, not its skip) the images of the
    same prompt still waiting are cancelled too; the owner's other prompts stay queued.
    Returns the ids of the jobs stopped or cancelled."""
    running = list(ImageJob.objects.filter(owner=owner, status=ImageJob.Status.PROCESSING))
    stopped = []
    if whole_request:
        rest = ImageJob.objects.filter(
            owner=owner, status=ImageJob.Status.QUEUED, message_id__in=[job.message_id for job in running]
        )
        # The waiting images first, so the worker does not start one of them meanwhile.
        stopped += [job.pk for job in rest if api_jobs.api_job_cancel(job=job)]
    stopped += [job.pk for job in running if services.job_interrupt(job=job)]
    return stopped


@api_view(ApiError)
async def interrupt(request: HttpRequest):
    """POST /sdapi/v1/interrupt: stops the caller's running request, nobody else's; its
    running images end with what they had (see `interrupt_running`)."""
    _method(request, "POST")
    api_key = await _authenticate(request)
    await run_db(interrupt_running, api_key.owner)
    return JsonResponse({})


@api_view(ApiError)
async def skip(request: HttpRequest):
    """POST /sdapi/v1/skip: as interrupt, for the images running now only; the rest of
    their request runs on (A1111 skips to the next image of a batch)."""
    _method(request, "POST")
    api_key = await _authenticate(request)
    await run_db(interrupt_running, api_key.owner, whole_request=False)
    return JsonResponse({})


# --- What clients probe: flags, lists, memory, PNG info -----------------------------------

# A1111's command-line flags as they would be set to run as Imagegen does: an API (with
# authentication) that serves the network, on full-precision-where-needed diffusers
# with PyTorch's own attention, and none of the features Imagegen does not have.
CMD_FLAGS: dict[str, Any] = {
    "api": True,
    "api_auth": "<user>:<API key>",  # A1111 shows its credentials here; never ours
    "api_log": False,
    "nowebui": False,
    "listen": True,
    "port": None,
    "server_name": None,
    "subpath": None,
    "share": False,
    "gradio_auth": None,
    "tls_keyfile": None,
    "tls_certfile": None,
    "cors_allow_origins": None,
    "cors_allow_origins_regex": None,
    "lowvram": False,
    "medvram": False,
    "medvram_sdxl": False,
    "lowram": False,
    "no_half": False,
    "no_half_vae": False,
    "precision": "autocast",
    "upcast_sampling": False,
    "xformers": False,
    "opt_sdp_attention": True,
    "opt_sdp_no_mem_attention": False,
    "use_cpu": [],
    "device_id": None,
    "ckpt": None,
    "ckpt_dir": None,
    "vae_dir": None,
    "lora_dir": None,
    "embeddings_dir": None,
    "hypernetwork_dir": None,
    "no_hashing": True,  # a model's hash is of its name and source, not of its file
    "no_download_sd_model": True,
    "disable_safe_unpickle": False,
    "enable_insecure_extension_access": False,
    "allow_code": False,
    "administrator": False,
    "freeze_settings": False,
    "api_server_stop": False,
    "skip_version_check": True,
    "skip_torch_cuda_test": False,
}


async def _probe(request: HttpRequest, method: str = "GET") -> ApiKey:
    _method(request, method)
    return await _authenticate(request)


@api_view(ApiError)
async def cmd_flags(request: HttpRequest):
    await _probe(request)
    return JsonResponse(CMD_FLAGS)


@api_view(ApiError)
async def embeddings(request: HttpRequest):
    """Textual-inversion embeddings: none."""
    await _probe(request)
    return JsonResponse({"loaded": {}, "skipped": {}})


@api_view(ApiError)
async def nothing_listed(request: HttpRequest):
    """A list of what Imagegen has none of (prompt styles, face restorers,
    hypernetworks, Real-ESRGAN models, VAEs, latent upscale modes, extensions, scripts'
    details): an empty list, as A1111 answers with none installed."""
    await _probe(request)
    return JsonResponse([], safe=False)


@api_view(ApiError)
async def refreshed(request: HttpRequest):
    """A refresh of a list (checkpoints, VAEs, LoRAs): nothing to do (see the urls)."""
    await _probe(request, "POST")
    return JsonResponse({})


def memory_of() -> dict[str, Any]:
    """A1111's memory report: the web process's RAM; of the GPU, what the live workers'
    processes hold (PyTorch's reserved memory, all that they report)."""
    try:
        import psutil

        process = psutil.Process()
        used = process.memory_info().rss
        total = psutil.virtual_memory().total
        ram: dict[str, Any] = {"free": total - used, "used": used, "total": total}
    except Exception as exc:  # psutil is not a requirement; A1111 answers this way too
        ram = {"error": str(exc)}
    live = Worker.objects.filter(last_seen_at__gte=Worker.live_since(timezone.now()), gpu_memory__isnull=False)
    reserved = list(live.values_list("gpu_memory", flat=True))
    cuda: dict[str, Any] = {"error": "unavailable"}
    if reserved:
        cuda = {"reserved": {"current": sum(reserved), "peak": sum(reserved)}}
    return {"ram": ram, "cuda": cuda}


@api_view(ApiError)
async def memory(request: HttpRequest):
    await _probe(request)
    return JsonResponse(await run_db(memory_of))


# A1111's reading of an infotext's last line: "Key: value" pairs, a value in quotes may
# hold commas; a size "512x768" is two values.
INFOTEXT_FIELD = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
INFOTEXT_SIZE = re.compile(r"^(\d+)x(\d+)$")


def parse_infotext(text: str) -> dict[str, Any]:
    """The generation parameters of an infotext as A1111's `parse_generation_parameters`
    reads them: "Prompt", "Negative prompt", then every field of the last line as text
    ("Size" as "Size-1" and "Size-2"), and "Clip skip" "1" when it says none."""
    *lines, last = text.strip().split("\n")
    if len(INFOTEXT_FIELD.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            negative.append(line.removeprefix("Negative prompt:").strip())
        else:
            (negative if negative else prompt).append(line)
    parameters: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in INFOTEXT_FIELD.findall(last):
        if len(value) > 1 and value[0] == value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        size = INFOTEXT_SIZE.match(value) if isinstance(value, str) else None
        if size:
            parameters[f"{key}-1"], parameters[f"{key}-2"] = size.groups()
        else:
            parameters[key] = value
    parameters.setdefault("Clip skip", "1")
    return parameters


def png_info_of(image: Image.Image) -> dict[str, Any]:
    """A1111's PNG info: the infotext (a PNG's "parameters" text, a JPEG's or WebP's EXIF
    UserComment), the image's other texts, and the parameters read from the infotext."""
    items = {key: value for key, value in image.info.items() if isinstance(key, str) and isinstance(value, str)}
    info = items.pop("parameters", None)
    comment = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    if info is None and isinstance(comment, bytes):
        # Eight bytes name the text's character set: UTF-16 (as A1111 writes it) or ASCII.
        charset = "utf-16-be" if comment.startswith(EXIF_UNICODE) else "utf-8"
        info = comment[8:].decode(charset, errors="replace")
    info = info or ""
    return {"info": info, "items": items, "parameters": parse_infotext(info)}


@api_view(ApiError)
async def png_info(request: HttpRequest):
    """POST /sdapi/v1/png-info: the generation parameters written in an image."""
    await _probe(request, "POST")
    image = _image_field(_json_body(request).get("image"), "image")
    return JsonResponse(png_info_of(image))


def lora_rows() -> list[dict[str, Any]]:
    return [
        {"name": lora.name, "alias": lora.name, "path": str(lora.path), "metadata": {"family": lora.family}}
        for lora in get_loras().all()
    ]


@api_view(ApiError)
async def loras(request: HttpRequest):
    """GET /sdapi/v1/loras: the installed LoRAs, as A1111's Lora extension lists them."""
    _method(request, "GET")
    await _authenticate(request)
    return JsonResponse(await run_db(lora_rows), safe=False)


@api_view(ApiError)
async def not_found(request: HttpRequest, rest: str = ""):
    raise ApiError(404, "Not Found")
