"""Site-wide views: the 400 handler that must not read the request body, health and metrics."""

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

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


@never_cache
def healthz(request):
    """For load balancers: 200 when every part answers, else 503 with what is wrong."""
    from generation.monitoring import health_checks

    healthy, checks = health_checks()
    response = JsonResponse({"status": "ok" if healthy else "fail", "checks": checks}, status=200 if healthy else 503)
    # Django would log each 503 as an error, once per load balancer's poll; the checks
    # log an outage once when it starts and once when it ends.
    response._has_been_logged = True
    return response


def _metrics_allowed(request) -> bool:
    token = settings.IMAGEGEN_METRICS_TOKEN
    if token:
        sent = request.headers.get("Authorization", "")
        if sent.startswith("Bearer ") and hmac.compare_digest(sent[len("Bearer ") :].encode(), token.encode()):
            return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in settings.IMAGEGEN_METRICS_ALLOWED_IPS)


@never_cache
def metrics(request):
    """Prometheus metrics, for a bearer token or an allowed address."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from generation.monitoring import JobMetrics

    if not _metrics_allowed(request):
        refusal = "Metrics need the bearer token or an allowed address.\n"
        return HttpResponseForbidden(refusal, content_type="text/plain")
    registry = CollectorRegistry()
    registry.register(JobMetrics())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
