from urllib.parse import urlsplit

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_POST

from generation import selectors, services
from generation.api import auth
from generation.models import ApiKey


def _card(request, job, status=200):
    live = selectors.job_live_states(jobs=[job]).get(job.pk, {})
    return render(request, "generation/_job_card.html", {"job": job, "live": live}, status=status)


@cache_control(private=True)
@login_required
def job_image(request, job_id: int):
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    if job.status != job.Status.COMPLETE or not job.image:
        raise Http404("No image for this job.")
    download = request.GET.get("download") == "1"
    return FileResponse(
        job.image.open("rb"), content_type="image/png", as_attachment=download, filename=f"imagegen-{job.pk}.png"
    )


@cache_control(private=True)
@login_required
def job_source(request, job_id: int):
    """An edit's source image (its own copy), for its owner only."""
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    if not job.source_image:
        raise Http404("This job did not start from an image.")
    return FileResponse(job.source_image.open("rb"), content_type="image/png", filename=f"imagegen-{job.pk}-source.png")


GALLERY_PAGE_SIZE = 24


@login_required
def image_gallery(request):
    """The user's own images across conversations, newest first, each linking to its message."""
    paginator = Paginator(selectors.image_list(user=request.user), GALLERY_PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    return render(request, "generation/gallery.html", {"page_obj": page})


@login_required
def job_card(request, job_id: int):
    """The job card alone: the live updates fetch it when a job changes state."""
    return _card(request, selectors.job_get_for_user(user=request.user, job_id=job_id))


def _act(request, job_id: int, action):
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    try:
        job = action(job=job)
    except services.JobError as exc:
        if request.headers.get("X-Requested-With") == "fetch":
            job.refresh_from_db()
            response = _card(request, job, status=409)
            response["X-Error"] = str(exc)
            return response
        messages.error(request, str(exc))
    if request.headers.get("X-Requested-With") == "fetch":
        return _card(request, selectors.job_get_for_user(user=request.user, job_id=job_id))
    return redirect("chat:conversation", conversation_id=job.conversation_id)


@require_POST
@login_required
def job_cancel(request, job_id: int):
    return _act(request, job_id, services.job_cancel)


@require_POST
@login_required
def job_retry(request, job_id: int):
    return _act(request, job_id, services.job_retry)


# The key just made, kept in the session between the POST and the page it redirects to.
NEW_KEY_SESSION = "new_api_key"


def _connect_settings(request, key: str | None) -> dict:
    """Where a program reaches this server and what it sends, for the page's snippets."""
    server = request.build_absolute_uri("/").rstrip("/")
    address = urlsplit(server)
    return {
        "server": server,
        "host": address.hostname,
        "port": address.port or (443 if address.scheme == "https" else 80),
        "https": address.scheme == "https",
        "key": key or "YOUR_KEY",
        "username": request.user.get_username(),
    }


@login_required
def api_keys(request):
    """The user's API keys. Making one redirects (a reload never makes a second), and the
    page it redirects to shows the key this once, with settings ready to paste."""
    if request.method == "POST":
        try:
            api_key, key = auth.api_key_create(owner=request.user, name=request.POST.get("name", ""))
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            return _render_api_keys(request, new_key=None, status=400)
        # Only until the next page: that page pops it, so a reload no longer shows it.
        request.session[NEW_KEY_SESSION] = {"id": api_key.pk, "name": api_key.name, "key": key}
        return redirect("api_keys")
    response = _render_api_keys(request, new_key=request.session.pop(NEW_KEY_SESSION, None))
    response["Cache-Control"] = "no-store"  # the key must not stay in a cache, nor come back with Back
    return response


def _render_api_keys(request, *, new_key: dict | None, status: int = 200):
    context = {
        "keys": ApiKey.objects.filter(owner=request.user),
        "new_key": new_key,
        "connect": _connect_settings(request, new_key and new_key["key"]),
        "name_max_length": auth.NAME_MAX_LENGTH,
    }
    return render(request, "generation/api_keys.html", context, status=status)


@require_POST
@login_required
def api_key_revoke(request, key_id: int):
    api_key = get_object_or_404(ApiKey, pk=key_id, owner=request.user)
    auth.api_key_revoke(api_key=api_key)
    messages.success(request, f"Revoked “{api_key.name}” ({api_key.prefix}…).")
    return redirect("api_keys")
