"""Reads for conversations and messages."""

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, OuterRef, Prefetch, QuerySet, Subquery
from django.shortcuts import get_object_or_404

from chat.models import ComposerSettings, Conversation, Message


def conversation_list(*, user: AbstractBaseUser) -> QuerySet[Conversation]:
    """The user's conversations, most recent activity first, each with its latest image's job id."""
    from generation.models import ImageJob

    latest_image = (
        ImageJob.objects.filter(conversation=OuterRef("pk"), status=ImageJob.Status.COMPLETE)
        .exclude(image="")
        .order_by("-finished_at", "-pk")
        .values("pk")[:1]
    )
    # An aggregate drops Meta.ordering, so the order is spelled out here.
    return (
        Conversation.objects.filter(owner=user)
        .annotate(message_count=Count("messages"), latest_image_job_id=Subquery(latest_image))
        .order_by("-updated_at", "-id")
    )


def conversation_get_for_user(*, user: AbstractBaseUser, conversation_id: int) -> Conversation:
    """The user's own conversation; anybody else's answers 404."""
    return get_object_or_404(Conversation, pk=conversation_id, owner=user)


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    """The conversation's messages, each with its image jobs (one per image asked for) in order."""
    from generation.models import ImageJob

    jobs = Prefetch("image_jobs", queryset=ImageJob.objects.select_related("source_job").order_by("image_index"))
    return Message.objects.filter(conversation=conversation).prefetch_related(jobs)


def composer_settings(*, user: AbstractBaseUser) -> dict[str, str]:
    """The composer's settings `user` used last; none when their model is no longer installed
    (the others were chosen for it)."""
    from generation.registry import get_registry

    values = ComposerSettings.objects.filter(owner=user).values_list("values", flat=True).first() or {}
    if values.get("model") and values["model"] not in get_registry():
        return {}
    return {key: value for key, value in values.items() if value != ""}
