"""Writes for conversations and messages."""

import json
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from chat.models import Conversation, Message

TITLE_MAX_LENGTH = Conversation._meta.get_field("title").max_length
DEFAULT_TITLE = Conversation._meta.get_field("title").default
AUTO_TITLE_LENGTH = 60


def title_from_prompt(prompt: str) -> str:
    """A short title from a prompt: its first words, cut at a word boundary."""
    words = " ".join(prompt.split())
    if len(words) <= AUTO_TITLE_LENGTH:
        return words
    cut = words[:AUTO_TITLE_LENGTH].rsplit(" ", 1)[0] or words[:AUTO_TITLE_LENGTH]
    return cut.rstrip(",.;:-") + "…"


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return `base` updated by `update`: nested dicts merge, other values replace.

    Keys that `update` does not name are kept. Neither argument is modified.
    """
    merged = dict(base)
    for key, value in update.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise ValidationError({"metadata": "Metadata must be a JSON object."})
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError({"metadata": f"Metadata must be JSON-serialisable: {exc}"}) from None


def message_update(message_id: int, *, content: str | None = None, metadata: dict | None = None) -> Message:
    """Deep-merge `metadata` into a message and optionally replace its content.

    The row is locked for the read-modify-write, so concurrent updates from the web
    process and the workers never lose each other's keys. On SQLite the IMMEDIATE
    transaction mode takes the database write lock at BEGIN, which does the same.
    """
    if metadata is not None:
        _check_metadata(metadata)
    with transaction.atomic():
        message = Message.objects.select_for_update().get(pk=message_id)
        changes: dict[str, Any] = {"updated_at": timezone.now()}
        if metadata:
            changes["metadata"] = deep_merge(message.metadata or {}, metadata)
        if content is not None:
            changes["content"] = content
        Message.objects.filter(pk=message_id).update(**changes)
        for field, value in changes.items():
            setattr(message, field, value)
    return message


def conversation_create(*, owner: AbstractBaseUser, title: str = "") -> Conversation:
    title = " ".join(title.split())[:TITLE_MAX_LENGTH] or DEFAULT_TITLE
    return Conversation.objects.create(owner=owner, title=title)


def conversation_rename(*, conversation: Conversation, title: str) -> Conversation:
    title = " ".join(title.split())
    if not title:
        raise ValidationError({"title": "A title is required."})
    if len(title) > TITLE_MAX_LENGTH:
        raise ValidationError({"title": f"A title has at most {TITLE_MAX_LENGTH} characters."})
    conversation.title = title
    conversation.save(update_fields=["title", "updated_at"])
    return conversation


def message_post(
    *,
    conversation: Conversation,
    role: str,
    content: str = "",
    metadata: dict | None = None,
) -> Message:
    """Add a message to a conversation and move the conversation to the top of its list.

    The first prompt of a conversation still called by the default title names it; a
    title the user chose is never replaced (the title is compared and set in one update).
    """
    if role not in Message.Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    metadata = metadata or {}
    _check_metadata(metadata)
    message = Message.objects.create(conversation=conversation, role=role, content=content, metadata=metadata)
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=message.created_at)
    title = title_from_prompt(content) if role == Message.Role.USER else ""
    if title and Conversation.objects.filter(pk=conversation.pk, title=DEFAULT_TITLE).update(title=title):
        conversation.title = title
    return message


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete a conversation with its messages and jobs; running jobs are cancelled first."""
    from generation.services import JobError, job_cancel

    for job in conversation.image_jobs.filter(status__in=("queued", "processing")):
        try:
            job_cancel(job=job)
        except JobError:
            pass  # it finished meanwhile
    image_names = [name for name in conversation.image_jobs.values_list("image", flat=True) if name]
    conversation.delete()
    if image_names:
        from generation.models import ImageJob

        storage = ImageJob._meta.get_field("image").storage
        transaction.on_commit(lambda: [storage.delete(name) for name in image_names])
