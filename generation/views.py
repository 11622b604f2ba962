from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from generation import selectors, services


@login_required
def job_image(request, job_id: int):
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    if job.status != job.Status.COMPLETE or not job.image:
        raise Http404("No image for this job.")
    download = request.GET.get("download") == "1"
    return FileResponse(
        job.image.open("rb"), content_type="image/png", as_attachment=download, filename=f"imagegen-{job.pk}.png"
    )


@require_POST
@login_required
def job_cancel(request, job_id: int):
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    try:
        services.job_cancel(job=job)
    except services.JobError as exc:
        messages.error(request, str(exc))
    return redirect("chat:conversation", conversation_id=job.conversation_id)


@login_required
def job_card(request, job_id: int):
    """The job card alone: the live updates fetch it when a job changes state."""
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    live = selectors.job_live_states(jobs=[job]).get(job.pk, {})
    return render(request, "generation/_job_card.html", {"job": job, "live": live})
