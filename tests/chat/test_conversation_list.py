"""The list of conversations: the latest activity first, readable titles and times."""

from datetime import timedelta

from django.urls import reverse
from django.utils import timezone

from chat.models import Conversation
from chat.services import conversation_create, conversation_rename
from generation.models import ImageJob
from tests.fakes import FakeGenerator
from tests.helpers import run_pass


def _titles(client) -> list[str]:
    response = client.get(reverse("chat:home"))
    return [conversation.title for conversation in response.context["conversations"]]


def test_the_conversation_with_the_latest_activity_comes_first(client, alice, submit):
    older = conversation_create(owner=alice, title="Older")
    newer = conversation_create(owner=alice, title="Newer")
    client.force_login(alice)
    assert _titles(client)[:2] == ["Newer", "Older"]

    submit("a boat in the older one", conversation=older)

    assert _titles(client).index(older.title) < _titles(client).index(newer.title)


def test_a_new_conversation_is_named_after_its_first_prompt(client, alice, submit):
    conversation = conversation_create(owner=alice)
    assert conversation.title == "New conversation"
    submit("A lighthouse on a cliff at dusk, storm clouds, oil painting", conversation=conversation)
    submit("a second prompt does not rename it", conversation=conversation)
    conversation.refresh_from_db()
    assert conversation.title == "A lighthouse on a cliff at dusk, storm clouds, oil painting"


def test_a_long_first_prompt_makes_a_short_title_cut_at_a_word(alice, submit):
    conversation = conversation_create(owner=alice)
    submit("a very detailed castle " * 10, conversation=conversation)
    conversation.refresh_from_db()
    assert conversation.title == "a very detailed castle a very detailed castle a very…"


def test_a_title_the_user_chose_is_kept(alice, submit):
    conversation = conversation_create(owner=alice)
    conversation_rename(conversation=conversation, title="Birthday cards")
    submit("a cake", conversation=conversation)
    conversation.refresh_from_db()
    assert conversation.title == "Birthday cards"


def test_times_read_naturally(client, alice):
    fresh = conversation_create(owner=alice, title="Fresh")
    old = conversation_create(owner=alice, title="Old")
    Conversation.objects.filter(pk=old.pk).update(updated_at=timezone.now() - timedelta(days=3, hours=2))
    client.force_login(alice)
    body = client.get(reverse("chat:home")).content.decode()
    assert "just now" in body and "0\xa0minutes" not in body and "0 minutes" not in body
    assert "3\xa0days ago" in body
    assert fresh.title in body


def test_each_conversation_shows_its_latest_image(client, alice, alice_chat, submit, runner_for):
    submit("first")
    submit("second")
    runner = runner_for(FakeGenerator())
    run_pass(runner)
    run_pass(runner)
    latest = ImageJob.objects.order_by("-finished_at", "-pk").first()
    client.force_login(alice)
    body = client.get(reverse("chat:home")).content.decode()
    assert reverse("generation:job_image", args=[latest.pk]) in body
