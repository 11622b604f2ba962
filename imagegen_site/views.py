"""Site-wide views: the error handler that must not read the request body."""

from django.shortcuts import render

FORM_TYPES = {"application/x-www-form-urlencoded", "multipart/form-data"}
GENERIC_SENTENCE = "The request could not be understood. Please go back and try again."


def bad_request(request, exception=None):
    """The 400 page, rendered without looking at the body that may have caused it.

    Django's own handler checks the CSRF token, which reads `request.POST` again; a
    body that could not be decoded the first time then fails again, as a 500.
    """
    sentence = GENERIC_SENTENCE
    charset = request.content_params.get("charset", "").strip().lower().replace("_", "-")
    if request.content_type in FORM_TYPES and charset not in {"", "utf-8", "utf8"}:
        sentence = f"Forms must be sent as UTF-8, not {charset[:40]}. Please go back and try again."
    context = {"code": "400", "heading": "Bad request", "sentence": sentence}
    return render(request, "_error_page.html", context, status=400)
