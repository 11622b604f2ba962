from django import template

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
