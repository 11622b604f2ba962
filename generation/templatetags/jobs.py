import json

from django import template
from django.utils import timezone
from django.utils.timesince import timesince

register = template.Library()


@register.filter
def duration(seconds) -> str:
    """Seconds as a short, friendly duration ("about 40 s", "about 3 min")."""
    if seconds is None or seconds == "":
        return ""
    seconds = max(int(seconds), 0)
    if seconds < 5:
        return "a few seconds"
    if seconds < 90:
        return f"about {seconds} s"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min"
    return f"about {round(seconds / 3600, 1):g} h"


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
    """Whole seconds from `moment` to now, for the page's own clock ("" when unknown)."""
    if not moment:
        return ""
    return str(max(int((timezone.now() - moment).total_seconds()), 0))


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
            "count": job.image_count,
        }
    )
