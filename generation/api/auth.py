"""API keys: made, shown once, stored as a digest, revoked; and who a request is.

A key is 32 random bytes from `secrets` (256 bits). Only its SHA-256 digest is stored,
with `hashlib`: a slow password hash (Django's PBKDF2) protects guessable passwords,
but nobody can guess a 256-bit random key, so a fast digest loses nothing and lets a
request find its key with one indexed lookup instead of trying every key's salt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from chat.models import Conversation
from chat.services import conversation_create
from generation.models import ApiKey

KEY_PREFIX = "ig_"
NAME_MAX_LENGTH = ApiKey._meta.get_field("name").max_length
DEFAULT_NAME = ApiKey._meta.get_field("name").default
# A key's last use is written at most this often, so a busy client costs no write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", errors="replace")).hexdigest()


def api_key_create(*, owner: AbstractBaseUser, name: str = "") -> tuple[ApiKey, str]:
    """A new key for `owner`; returns the row and the key itself, which is never stored."""
    name = " ".join(name.split()) or DEFAULT_NAME
    if len(name) > NAME_MAX_LENGTH:
        raise ValidationError({"name": f"A key's name has at most {NAME_MAX_LENGTH} characters."})
    if "\x00" in name:
        raise ValidationError({"name": "A name cannot contain NUL (\\x00) characters."})
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(owner=owner, name=name, prefix=key[:10], digest=key_digest(key))
    return api_key, key


def api_key_revoke(*, api_key: ApiKey, now: datetime | None = None) -> ApiKey:
    """Revoke a key: the next request with it is refused. Revoking twice changes nothing."""
    now = now or timezone.now()
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=now)
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


def api_key_authenticate(*, key: str, username: str | None = None, now: datetime | None = None) -> ApiKey | None:
    """The active key `key` of an active user (named `username`, when given), or None."""
    if not key or not key.startswith(KEY_PREFIX):
        return None
    api_key = (
        ApiKey.objects.select_related("owner")
        .filter(digest=key_digest(key), revoked_at__isnull=True, owner__is_active=True)
        .first()
    )
    if api_key is None or (username is not None and api_key.owner.get_username() != username):
        return None
    now = now or timezone.now()
    if api_key.last_used_at is None or api_key.last_used_at < now - LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    return api_key


def bearer_key(authorization: str) -> str:
    """The key in `Authorization: Bearer <key>`, or ""."""
    scheme, _, credentials = authorization.strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def basic_credentials(authorization: str) -> tuple[str, str]:
    """(user name, password) from `Authorization: Basic ...`, or ("", "")."""
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    username, _, password = decoded.partition(":")
    return username, password


def api_key_conversation(*, api_key: ApiKey) -> Conversation:
    """The conversation the key's jobs appear in, named after the key; made again if deleted.

    The key's row is locked first, so two requests at once cannot make two conversations.
    """
    with transaction.atomic():
        key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
        if key.conversation is not None:
            return key.conversation
        conversation = conversation_create(owner=api_key.owner, title=key.name)
        ApiKey.objects.filter(pk=key.pk).update(conversation=conversation)
        return conversation
