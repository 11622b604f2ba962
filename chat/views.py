from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from chat import selectors, services
from generation import selectors as generation_selectors
from generation import services as generation_services
from generation.forms import JobForm


@login_required
def home(request):
    conversations = selectors.conversation_list(user=request.user)
    return render(request, "chat/home.html", {"conversations": conversations})


@require_POST
@login_required
def conversation_new(request):
    conversation = services.conversation_create(owner=request.user, title=request.POST.get("title", ""))
    return redirect("chat:conversation", conversation_id=conversation.pk)


def _message_items(conversation) -> list[dict]:
    messages = list(selectors.message_list(conversation=conversation))
    jobs = [message.image_job for message in messages if hasattr(message, "image_job")]
    states = generation_selectors.job_live_states(jobs=jobs)
    items = []
    for message in messages:
        job = getattr(message, "image_job", None)
        items.append({"message": message, "job": job, "live": states.get(job.pk, {}) if job else {}})
    return items


def _render_conversation(request, conversation, form, status=200):
    context = {
        "conversation": conversation,
        "items": _message_items(conversation),
        "form": form,
        "service": generation_selectors.service_status(),
    }
    return render(request, "chat/conversation.html", context, status=status)


@login_required
def conversation_detail(request, conversation_id: int):
    conversation = selectors.conversation_get_for_user(user=request.user, conversation_id=conversation_id)
    return _render_conversation(request, conversation, JobForm())


@require_POST
@login_required
def job_submit(request, conversation_id: int):
    conversation = selectors.conversation_get_for_user(user=request.user, conversation_id=conversation_id)
    form = JobForm(data=request.POST)
    if form.is_valid():
        params = {key: request.POST[key] for key in JobForm.base_fields if key in request.POST and key != "prompt"}
        try:
            generation_services.job_submit(
                user=request.user, conversation=conversation, prompt=request.POST.get("prompt", ""), **params
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            return redirect("chat:conversation", conversation_id=conversation.pk)
    return _render_conversation(request, conversation, form, status=400)
