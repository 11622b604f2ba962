from urllib.parse import quote

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from chat import selectors, services
from generation import selectors as generation_selectors
from generation import services as generation_services
from generation.forms import JobForm
from generation.uploads import PAINTED, mask_from, read_image

RECENT_COUNT = 15  # conversations in the page's sidebar


def _is_fetch(request) -> bool:
    return request.headers.get("X-Requested-With") == "fetch"


def _render_home(request, status=200):
    conversations = selectors.conversation_list(user=request.user)
    return render(request, "chat/home.html", {"conversations": conversations}, status=status)


@login_required
def home(request):
    return _render_home(request)


@require_POST
@login_required
def conversation_new(request):
    try:
        conversation = services.conversation_create(owner=request.user, title=request.POST.get("title", ""))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return _render_home(request, status=400)
    return redirect("chat:conversation", conversation_id=conversation.pk)


@require_POST
@login_required
def conversation_rename(request, conversation_id: int):
    conversation = selectors.conversation_get_for_user(user=request.user, conversation_id=conversation_id)
    try:
        services.conversation_rename(conversation=conversation, title=request.POST.get("title", ""))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return _render_conversation(request, conversation, _composer(request), status=400)
    return redirect("chat:conversation", conversation_id=conversation.pk)


@require_POST
@login_required
def conversation_delete(request, conversation_id: int):
    conversation = selectors.conversation_get_for_user(user=request.user, conversation_id=conversation_id)
    title = conversation.title
    generation_services.conversation_delete(conversation=conversation)
    messages.success(request, f"Deleted “{title}”.")
    return redirect("chat:home")


def _message_items(messages_list) -> list[dict]:
    """What `chat/_messages.html` shows per message: its jobs (cards), each with its live state."""
    jobs_of = {message.pk: list(message.image_jobs.all()) for message in messages_list}
    states = generation_selectors.job_live_states(jobs=[job for jobs in jobs_of.values() for job in jobs])
    return [
        {"message": message, "cards": [(job, states.get(job.pk, {})) for job in jobs_of[message.pk]]}
        for message in messages_list
    ]


def _message_item(message, jobs, *, etas: bool = True) -> dict:
    states = generation_selectors.job_live_states(jobs=jobs, etas=etas)
    return {"message": message, "cards": [(job, states.get(job.pk, {})) for job in jobs]}


def _render_conversation(request, conversation, form, status=200):
    context = {
        "conversation": conversation,
        "items": _message_items(list(selectors.message_list(conversation=conversation))),
        "form": form,
        "service": generation_selectors.service_status(),
        # The sidebar: the latest conversations, this one among them.
        "recent": selectors.conversation_list(user=request.user)[:RECENT_COUNT],
        "current": conversation,
    }
    return render(request, "chat/conversation.html", context, status=status)


def _composer(request) -> JobForm:
    """A fresh composer with the person's last settings."""
    return JobForm(initial=selectors.composer_settings(user=request.user))


@login_required
def conversation_detail(request, conversation_id: int):
    conversation = selectors.conversation_get_for_user(user=request.user, conversation_id=conversation_id)
    return _render_conversation(request, conversation, _composer(request))


@require_POST
@login_required
def composer_settings_save(request):
    """The composer's settings changed: remember them (checked as a prompt's would be)."""
    values = {key: request.POST[key] for key in JobForm.REMEMBERED if key in request.POST}
    form = JobForm(data={**values, "prompt": "-"})
    if not form.is_valid():
        errors = {field: [str(error) for error in errors] for field, errors in form.errors.items()}
        return JsonResponse({"errors": errors}, status=400)
    services.composer_settings_save(user=request.user, values=values)
    return HttpResponse(status=204)


def _uploaded_edit(request) -> dict:
    """The image the composer sent (a file) and the mask painted in the viewer, read and checked."""
    uploaded = {}
    image = request.FILES.get("image")
    if image is not None:
        try:
            uploaded["source"] = read_image(image.read(), label="Image")
        except ValidationError as exc:
            raise ValidationError({"image": exc.messages}) from None
    mask = request.FILES.get("mask")
    if mask is not None:
        try:
            uploaded["mask"] = mask_from(
                read_image(mask.read(), label="Mask"), size=_painted_over(request, uploaded), marks=PAINTED
            )
        except ValidationError as exc:
            raise ValidationError({"mask": exc.messages}) from None
    return uploaded


def _painted_over(request, uploaded: dict) -> tuple[int, int]:
    """The size of the image a mask was painted over: the one sent with it, or one of the user's."""
    if "source" in uploaded:
        return uploaded["source"].size
    source_id = request.POST.get("source_job", "")
    if not source_id.isdigit():
        raise ValidationError("Mask: paint it over one of your images.")
    source = generation_selectors.job_get_for_user(user=request.user, job_id=int(source_id))
    return (source.width, source.height)


@require_POST
@login_required
def job_submit(request, conversation_id: int):
    """Queue a prompt. The page posts with fetch and gets the new messages back as HTML."""
    conversation = selectors.conversation_get_for_user(user=request.user, conversation_id=conversation_id)
    fields = {
        key: request.POST[key]
        for key in JobForm.base_fields
        if key in request.POST and key not in ("prompt", "image", "mask")
    }
    try:
        submission = generation_services.job_submit(
            user=request.user,
            conversation=conversation,
            prompt=request.POST.get("prompt", ""),
            **_uploaded_edit(request),
            **fields,
        )
    except (ValidationError, generation_services.JobRefused) as exc:
        # Show the refusal on the form: its fields' own errors, or the cap that refused it.
        form = JobForm(data=request.POST)
        if form.is_valid():
            form.add_error(None, str(exc) if isinstance(exc, generation_services.JobRefused) else exc)
        # The user's own caps or input are a 400; a service that cannot take work (a full disk) a 503.
        status = 503 if isinstance(exc, generation_services.JobRefused) and exc.refusal.unavailable else 400
    else:
        if request.POST.get("composer"):  # the composer's prompt, not a card's Vary or Same seed
            services.composer_settings_save(user=request.user, values=request.POST)
        if not _is_fetch(request):
            return redirect("chat:conversation", conversation_id=conversation.pk)
        items = [
            {"message": submission.prompt_message, "cards": []},
            _message_item(submission.reply, submission.jobs, etas=False),
        ]
        response = render(request, "chat/_messages.html", {"items": items}, status=201)
        # The first prompt may have named the conversation; the page shows the new title.
        response["X-Conversation-Title"] = quote(submission.conversation.title)
        return response
    if _is_fetch(request):
        return render(request, "chat/_prompt_form.html", {"form": form, "conversation": conversation}, status=status)
    return _render_conversation(request, conversation, form, status=status)
