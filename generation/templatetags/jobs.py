import json
import math

from django import template
from django.utils import timezone
from django.utils.timesince import timesince

from generation import texts
from generation.families import SAMPLER_NAMES, SCHEDULES
from generation.registry import model_family
from generation.request import DEFAULT_SCHEDULE

register = template.Library()


def _whole_seconds(seconds) -> int | None:
    """Seconds as whole seconds, halves rounding up as in the JS (floor(x + 0.5): round()
    would round them to even); None when unknown."""
    if seconds is None or seconds == "":
        return None
    value = float(seconds)
    if not math.isfinite(value):
        return None
    return max(math.floor(value + 0.5), 0)


@register.filter
def duration(seconds) -> str:
    """Seconds as a short, friendly duration ("about 45 s", "about 3 min").

    The page's countdown says the same in static/js/chat/duration.js, step for step:
    a change here is a change there (tests/chat/test_duration_text.py compares them).
    """
    whole = _whole_seconds(seconds)
    if whole is None:
        return ""
    if whole < 5:
        return "a few seconds"
    # Five-second steps, as the page's countdown takes them: it must not chatter for screen readers.
    if whole < 90:
        return f"about {math.ceil(whole / 5) * 5} s"
    if whole < 5400:
        return f"about {(whole + 30) // 60} min"
    hours, tenth = divmod((whole + 180) // 360, 10)
    return f"about {hours}.{tenth} h" if tenth else f"about {hours} h"


@register.filter
def time_left(seconds, progress) -> str:
    """A running job's time left ("About 45 s left", "A few seconds left"); "Almost done…"
    only once its progress says so too (90 % or more). As `timeLeft` in duration.js."""
    whole = _whole_seconds(seconds)
    if whole is None:
        return ""
    if whole < 5 and float(progress or 0) >= 90:
        return "Almost done…"
    text = duration(seconds)
    return f"{text[0].upper()}{text[1:]} left"


@register.filter
def waiting_time(live) -> str:
    """A queued job's wait, from its live state ("Starts in about 45 s, ready in about
    2 min"). As `waitingTime` in duration.js."""
    if not isinstance(live, dict):
        return ""
    start, ready = live.get("estimated_start_seconds"), live.get("estimated_seconds")
    if _whole_seconds(start) is None or _whole_seconds(ready) is None:
        return ""
    when = f"Starts in {duration(start)}" if float(start) > 0 else "Starting soon"
    return f"{when}, ready in {duration(ready)}"


@register.filter
def seconds_value(seconds) -> str:
    """Seconds for a data attribute the page's script reads: a plain number whatever the
    language (one decimal), "" when unknown."""
    if seconds is None or seconds == "":
        return ""
    return f"{float(seconds):.1f}"


@register.filter
def ago(moment) -> str:
    """A readable relative time: "just now", "5 minutes ago", "2 days ago"."""
    if not moment:
        return ""
    if (timezone.now() - moment).total_seconds() < 60:
        return "just now"
    # timesince gives "3 days, 2 hours"; the first part is enough for a list.
    return f"{timesince(moment).split(',')[0]} ago"


@register.filter
def seconds_since(moment) -> str:
    """Seconds (one decimal) from `moment` to now, for the page's own clock ("" when unknown)."""
    if not moment:
        return ""
    return f"{max((timezone.now() - moment).total_seconds(), 0.0):.1f}"


@register.filter
def reuse_json(job) -> str:
    """The prompt and settings a card's "use these settings" puts back into the form."""
    return json.dumps(
        {
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "model": job.model,
            "width": job.width,
            "height": job.height,
            "steps": job.steps,
            "guidance": job.guidance,
            "seed": job.seed,
            "scheduler": job.scheduler,
            "schedule": job.schedule,
            "loras": job.loras,
            "count": job.image_count,
        }
    )


@register.simple_tag
def text(name: str) -> str:
    """A sentence from generation/texts.py, by name."""
    return getattr(texts, name)


@register.filter
def images_ahead(position) -> str:
    return texts.images_ahead(position)


@register.filter
def guidance_label(job) -> str:
    """ "CFG" for classifier-free guidance; "Guidance" where the model takes it as an input (Flux)."""
    return "Guidance" if model_family(job.model).guidance == "distilled" else "CFG"


@register.filter
def sampler_label(job) -> str:
    """The job's sampler as A1111 names it, with its schedule unless Automatic ("DPM++ 2M Karras")."""
    label = SAMPLER_NAMES.get(job.scheduler, job.scheduler)
    if job.schedule and job.schedule != DEFAULT_SCHEDULE:
        label += f" {SCHEDULES[job.schedule][0] if job.schedule in SCHEDULES else job.schedule}"
    return label


EDIT_LABELS = {"img2img": "Edit", "inpaint": "Inpainting", "upscale": "Upscale"}


@register.filter
def edit_label(job) -> str:
    """What an edit did to its source, in a word."""
    return EDIT_LABELS.get(job.kind, "Edit")


@register.filter
def edit_kinds(job) -> list[str]:
    """The edits its model's family makes (an instruction-edit model neither inpaints nor upscales)."""
    return list(model_family(job.model).edit_pipelines)


@register.simple_tag
def edit_strengths() -> dict:
    from generation.forms import DEFAULT_STRENGTH, VARY_STRONG, VARY_SUBTLE

    return {"vary_subtle": VARY_SUBTLE, "vary_strong": VARY_STRONG, "edit_strength": DEFAULT_STRENGTH["img2img"]}
