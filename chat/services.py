"""Writes for conversations and messages."""

import json
import re
from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from chat.models import ComposerSettings, Conversation, Message

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


_SCALARS = (str, int, float, bool, type(None))
_KEY = re.compile(r"[A-Za-z0-9_]+")


def _is_flat(metadata: dict[str, Any]) -> bool:
    return all(isinstance(value, _SCALARS) for value in metadata.values())


def _merge_flat_sql(column: str, *, vendor: str, keys: list[str]) -> str:
    """SQL that sets top-level `keys` of a JSON column from a JSON object parameter.

    For scalar values a top-level set is exactly the deep merge. The statement is
    one UPDATE, which locks the row itself, so it needs no separate locked read.
    """
    if vendor == "postgresql":
        return f"{column} || %s::jsonb"
    paths = ", ".join(f"'$.\"{key}\"', json(%s -> '$.\"{key}\"')" for key in keys)
    return f"json_set({column}, {paths})"


def message_update(
    message_id: int,
    *,
    content: str | None = None,
    metadata: dict | None = None,
    derive: Callable[[dict[str, Any]], tuple[dict[str, Any], str | None]] | None = None,
) -> None:
    """Deep-merge `metadata` into a message and optionally replace its content.

    Nested dicts merge, other values replace, keys the update does not name stay.
    An update of scalar values only (progress, status, positions: nearly all of
    them) is one UPDATE statement that merges in the database under the row lock
    it takes; anything nested is merged in Python under `select_for_update`. Either
    way concurrent updates from the web process and the workers never lose each
    other's keys. On SQLite the IMMEDIATE transaction mode takes the database write
    lock at BEGIN, which does the same.

    `derive`, if given, is called with the merged metadata under the same lock and
    returns more top-level keys to merge and a new content (or None): a summary that
    must agree with everything merged so far, such as a prompt's state from its
    images' states.
    """
    if metadata is not None:
        _check_metadata(metadata)
    now = timezone.now()
    if derive is None and metadata and _is_flat(metadata) and all(_KEY.fullmatch(key) for key in metadata):
        _message_merge_flat(message_id, content=content, metadata=metadata, now=now)
        return
    with transaction.atomic():
        message = Message.objects.select_for_update().only("metadata").get(pk=message_id)
        merged = deep_merge(message.metadata or {}, metadata or {})
        if derive is not None:
            summary, derived_content = derive(merged)
            _check_metadata(summary)
            merged = deep_merge(merged, summary)
            content = derived_content if derived_content is not None else content
        changes: dict[str, Any] = {"updated_at": now, "metadata": merged}
        if content is not None:
            changes["content"] = content
        Message.objects.filter(pk=message_id).update(**changes)


def _message_merge_flat(message_id: int, *, content: str | None, metadata: dict[str, Any], now) -> None:
    keys = list(metadata)
    patch = json.dumps(metadata, allow_nan=False)
    merge = _merge_flat_sql("metadata", vendor=connection.vendor, keys=keys)
    params: list[Any] = [patch] if connection.vendor == "postgresql" else [patch] * len(keys)
    sets = [f"metadata = {merge}", "updated_at = %s"]
    params.append(connection.ops.adapt_datetimefield_value(now))
    if content is not None:
        sets.append("content = %s")
        params.append(content)
    table = Message._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {', '.join(sets)} WHERE id = %s", [*params, message_id])
        if cursor.rowcount == 0:
            raise Message.DoesNotExist(f"No message {message_id}")


def message_update_many(*, updates: dict[int, dict[str, Any]], only_if: dict[str, str]) -> int:
    """Merge flat metadata into many messages in one statement; returns how many changed.

    Every update names the same keys with scalar values. A message changes only when
    its metadata holds `only_if` (checked on the row as it is locked, so a message
    that moved on meanwhile is left alone) and the update would change something.
    """
    if not updates:
        return 0
    keys = sorted(next(iter(updates.values())))
    for metadata in updates.values():
        if not isinstance(metadata, dict) or sorted(metadata) != keys or not _is_flat(metadata):
            raise ValidationError({"metadata": "Bulk updates name the same scalar keys for every message."})
    if not all(_KEY.fullmatch(key) for key in [*keys, *only_if]):
        raise ValidationError({"metadata": "Bulk updates take plain key names."})
    table = Message._meta.db_table
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    _check_metadata(payload := {str(pk): metadata for pk, metadata in updates.items()})
    payload = json.dumps(payload, allow_nan=False)
    if connection.vendor == "postgresql":
        sql = (
            f"UPDATE {table} AS m SET metadata = m.metadata || v.value, updated_at = %s"
            " FROM jsonb_each(%s::jsonb) AS v"
            " WHERE m.id = v.key::bigint AND m.metadata @> %s::jsonb AND NOT m.metadata @> v.value"
        )
        params = [now, payload, json.dumps(only_if)]
    else:
        merge = _merge_flat_sql("metadata", vendor="sqlite", keys=keys).replace("%s", "v.value")
        guards = " AND ".join(f"json_extract(metadata, '$.{key}') = %s" for key in only_if)
        changed = " OR ".join(f"(metadata -> '$.{key}') IS NOT (v.value -> '$.{key}')" for key in keys)
        sql = (
            f"UPDATE {table} SET metadata = {merge}, updated_at = %s"
            f" FROM json_each(%s) AS v WHERE {table}.id = CAST(v.key AS INTEGER) AND {guards} AND ({changed})"
        )
        params = [now, payload, *only_if.values()]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _check_title_characters(title: str) -> None:
    # PostgreSQL cannot store a NUL character in text; refuse it before the database does.
    if "\x00" in title:
        raise ValidationError({"title": "A title cannot contain NUL (\\x00) characters."})


def conversation_create(*, owner: AbstractBaseUser, title: str = "") -> Conversation:
    _check_title_characters(title)
    title = " ".join(title.split())[:TITLE_MAX_LENGTH] or DEFAULT_TITLE
    return Conversation.objects.create(owner=owner, title=title)


def conversation_rename(*, conversation: Conversation, title: str) -> Conversation:
    _check_title_characters(title)
    title = " ".join(title.split())
    if not title:
        raise ValidationError({"title": "A title is required."})
    if len(title) > TITLE_MAX_LENGTH:
        raise ValidationError({"title": f"A title has at most {TITLE_MAX_LENGTH} characters."})
    conversation.title = title
    conversation.save(update_fields=["title", "updated_at"])
    return conversation


def exchange_post(
    *, conversation: Conversation, prompt: str, reply: str, reply_metadata: dict
) -> tuple[Message, Message]:
    """The user's prompt and the assistant's reply, in one insert; the conversation moves to the top.

    The first prompt of a conversation still called by the default title names it; a
    title the user chose is never replaced (compared and set in the same update).
    """
    _check_metadata(reply_metadata)
    now = timezone.now()
    asked, answered = Message.objects.bulk_create(
        [
            Message(conversation=conversation, role=Message.Role.USER, content=prompt, created_at=now),
            Message(
                conversation=conversation,
                role=Message.Role.ASSISTANT,
                content=reply,
                metadata=reply_metadata,
                created_at=now,
            ),
        ]
    )
    named = title_from_prompt(prompt)
    Conversation.objects.filter(pk=conversation.pk).update(
        updated_at=now, title=Case(When(title=DEFAULT_TITLE, then=Value(named)), default=F("title"))
    )
    conversation.updated_at = now
    if conversation.title == DEFAULT_TITLE:
        conversation.title = named
    return asked, answered


def composer_settings_save(*, user: AbstractBaseUser, values: dict[str, str]) -> None:
    """Remember the composer's settings of `user` (the fields of `JobForm.REMEMBERED`, as posted)."""
    from generation.forms import JobForm

    kept = {key: str(values[key]) for key in JobForm.REMEMBERED if key in values}
    ComposerSettings.objects.update_or_create(owner=user, defaults={"values": kept})
