import re

import pytest
from django.urls import reverse

from chat.models import Conversation, Message
from generation.models import ImageJob
from tests.fakes import FakeGenerator
from tests.helpers import run_pass

FETCH = {"HTTP_X_REQUESTED_WITH": "fetch"}


def test_a_prompt_posted_by_the_page_returns_the_two_new_messages(client, alice, alice_chat):
    client.force_login(alice)
    url = reverse("chat:job_submit", args=[alice_chat.pk])
    response = client.post(url, {"prompt": "a paper boat"}, **FETCH)
    assert response.status_code == 201
    body = response.content.decode()
    job = ImageJob.objects.get()
    assert body.count('class="message role-') == 2
    assert "a paper boat" in body
    assert f'id="job-{job.pk}"' in body and "Position: 1" in body


def test_bad_input_posted_by_the_page_returns_the_form_with_its_errors(client, alice, alice_chat):
    client.force_login(alice)
    url = reverse("chat:job_submit", args=[alice_chat.pk])
    response = client.post(url, {"prompt": "ok", "guidance": "99", "seed": "-5"}, **FETCH)
    assert response.status_code == 400
    body = response.content.decode()
    assert 'id="prompt-form"' in body
    assert "Guidance: 0-30." in body and "Seed: 0-4294967295" in body
    assert not ImageJob.objects.exists() and not Message.objects.exists()


def test_the_owner_renames_a_conversation(client, alice, alice_chat):
    client.force_login(alice)
    client.post(reverse("chat:conversation_rename", args=[alice_chat.pk]), {"title": "  Castles  "})
    alice_chat.refresh_from_db()
    assert alice_chat.title == "Castles"


def test_an_empty_title_is_refused_with_a_message(client, alice, alice_chat):
    client.force_login(alice)
    response = client.post(reverse("chat:conversation_rename", args=[alice_chat.pk]), {"title": "  "}, follow=True)
    assert "A title is required." in response.content.decode()
    alice_chat.refresh_from_db()
    assert alice_chat.title == "Alice's pictures"


def test_deleting_a_conversation_cancels_its_jobs_and_removes_its_images(
    client, alice, alice_chat, submit, runner_for, settings
):
    submit("done")
    run_pass(runner_for(FakeGenerator()))
    submit("waiting")
    client.force_login(alice)
    response = client.post(reverse("chat:conversation_delete", args=[alice_chat.pk]), follow=True)
    assert "Deleted" in response.content.decode()
    assert not Conversation.objects.exists() and not ImageJob.objects.exists()


@pytest.mark.parametrize("name", ["chat:conversation_rename", "chat:conversation_delete"])
def test_another_users_conversation_cannot_be_renamed_or_deleted(client, bob, alice_chat, name):
    client.force_login(bob)
    assert client.post(reverse(name, args=[alice_chat.pk]), {"title": "mine"}).status_code == 404
    alice_chat.refresh_from_db()
    assert alice_chat.title == "Alice's pictures"


def test_a_failed_job_is_retried_at_the_back_of_the_queue(client, alice, submit, runner_for):
    failed = submit("flaky")
    run_pass(runner_for(FakeGenerator(failures=[RuntimeError("boom")])))
    other = submit("other")
    client.force_login(alice)

    response = client.post(reverse("generation:job_retry", args=[failed.pk]), **FETCH)

    assert response.status_code == 200
    failed.refresh_from_db()
    assert (failed.status, failed.error, failed.attempts) == ("queued", "", 0)
    assert failed.sequence > other.sequence
    assert "Position: 2" in response.content.decode()
    assert Message.objects.get(pk=failed.message_id).metadata["status"] == "queued"


def test_a_queued_job_cannot_be_retried(client, alice, submit):
    job = submit("fine")
    client.force_login(alice)
    response = client.post(reverse("generation:job_retry", args=[job.pk]), **FETCH)
    assert response.status_code == 409
    assert "Only failed or cancelled jobs" in response["X-Error"]


def test_cancel_from_the_page_swaps_the_card(client, alice, submit):
    job = submit("never mind")
    client.force_login(alice)
    response = client.post(reverse("generation:job_cancel", args=[job.pk]), **FETCH)
    assert response.status_code == 200
    assert 'data-status="cancelled"' in response.content.decode()
    assert "Try again" in response.content.decode()


def test_no_element_id_appears_twice_on_a_page_with_many_cards(client, settings, alice, alice_chat, submit, runner_for):
    import re
    from collections import Counter

    settings.IMAGEGEN_SUBMISSIONS_PER_MINUTE = 100
    runner = runner_for(FakeGenerator())
    submit("done one")
    run_pass(runner)
    submit("done two")
    run_pass(runner)
    submit("waiting one")
    submit("waiting two")
    submit("waiting three")
    client.force_login(alice)
    body = client.get(reverse("chat:conversation", args=[alice_chat.pk])).content.decode()
    ids = Counter(re.findall(r'\sid="([^"]+)"', body))
    assert body.count('data-testid="cancel-button"') == 3
    assert [name for name, count in ids.items() if count > 1] == []


def test_a_processing_card_shows_its_persisted_progress_and_elapsed_time(client, alice, alice_chat, submit):
    from datetime import timedelta

    from django.utils import timezone

    job = submit("half way")
    ImageJob.objects.filter(pk=job.pk).update(
        status="processing", progress=30, started_at=timezone.now() - timedelta(seconds=12)
    )
    client.force_login(alice)
    body = client.get(reverse("generation:job_card", args=[job.pk])).content.decode()
    assert 'value="30"' in body and ">30%<" in body
    assert re.search(r'data-elapsed="1[23]\.\d"', body), "seconds since it started, in tenths"
    assert "Starting…" not in body


def test_a_processing_card_with_no_step_yet_says_it_is_starting(client, alice, submit):
    job = submit("first of the day")
    ImageJob.objects.filter(pk=job.pk).update(status="processing", progress=0)
    client.force_login(alice)
    body = client.get(reverse("generation:job_card", args=[job.pk])).content.decode()
    assert "Starting… the model may be loading" in body


def test_the_first_prompt_sent_by_the_page_names_the_conversation_and_says_so(client, alice):
    from urllib.parse import unquote

    from chat.services import conversation_create

    conversation = conversation_create(owner=alice)
    client.force_login(alice)
    url = reverse("chat:job_submit", args=[conversation.pk])
    response = client.post(url, {"prompt": "Ein Schloss im Mondschein"}, **FETCH)
    assert response.status_code == 201
    assert unquote(response["X-Conversation-Title"]) == "Ein Schloss im Mondschein"
    conversation.refresh_from_db()
    assert conversation.title == "Ein Schloss im Mondschein"


def test_a_new_conversation_titled_with_a_nul_character_is_refused_with_a_message(client, alice):
    client.force_login(alice)
    response = client.post(reverse("chat:conversation_new"), {"title": "bad\x00title"})
    assert response.status_code == 400
    assert "A title cannot contain NUL" in response.content.decode()
    assert not Conversation.objects.exists()


def test_a_rename_with_a_nul_character_is_refused_with_a_message(client, alice, alice_chat):
    client.force_login(alice)
    response = client.post(reverse("chat:conversation_rename", args=[alice_chat.pk]), {"title": "Cas\x00tles"})
    assert response.status_code == 400
    assert "A title cannot contain NUL" in response.content.decode()
    alice_chat.refresh_from_db()
    assert alice_chat.title == "Alice's pictures"
