"""Reads for conversations and messages."""

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, QuerySet
from django.shortcuts import get_object_or_404

from chat.models import Conversation, Message


def conversation_list(*, user: AbstractBaseUser) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner=user).annotate(message_count=Count("messages"))


def conversation_get_for_user(*, user: AbstractBaseUser, conversation_id: int) -> Conversation:
    """The user's own conversation; anybody else's answers 404."""
    return get_object_or_404(Conversation, pk=conversation_id, owner=user)


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    return Message.objects.filter(conversation=conversation).select_related("image_job")
