from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from chat.models import Conversation, Message
from generation import selectors
from generation.models import ImageJob
from tests.conftest import make_user
from tests.fakes import FakeGenerator
from tests.helpers import run_pass


@pytest.fixture
def admin_client(client, db):
    root = make_user("root")
    root.is_staff = root.is_superuser = True
    root.save()
    client.force_login(root)
    return client


def _action(admin_client, action, jobs):
    return admin_client.post(
        reverse("admin:generation_imagejob_changelist"),
        {"action": action, "_selected_action": [job.pk for job in jobs]},
        follow=True,
    )


def test_the_job_list_shows_status_positions_timings_and_thumbnails(admin_client, submit, runner_for):
    done = submit("a finished kite")
    run_pass(runner_for(FakeGenerator()))
    waiting = submit("a waiting kite")
    response = admin_client.get(reverse("admin:generation_imagejob_changelist"))
    body = response.content.decode()
    assert response.status_code == 200
    assert reverse("admin:generation_imagejob_image", args=[done.pk]) in body
    assert "64×64" in body and "Queue in order" in body
    image = admin_client.get(reverse("admin:generation_imagejob_image", args=[done.pk]))
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    detail = admin_client.get(reverse("admin:generation_imagejob_change", args=[waiting.pk])).content.decode()
    assert "a waiting kite" in detail


@pytest.mark.parametrize("query", ["status__exact=queued", "model__exact=demo", "q=kite", "q=alice"])
def test_filters_and_search_work(admin_client, submit, query):
    submit("a kite")
    response = admin_client.get(reverse("admin:generation_imagejob_changelist") + "?" + query)
    assert response.status_code == 200
    assert "1 image job" in response.content.decode()


def test_the_queue_view_lists_queued_jobs_in_position_order(admin_client, submit, bob_chat):
    first, second = submit("first"), submit("second", conversation=bob_chat)
    body = admin_client.get(reverse("admin:generation_imagejob_queue")).content.decode()
    assert body.index(f"#{first.pk}<") < body.index(f"#{second.pk}<")
    assert "Nothing is running." in body


def test_cancel_action_goes_through_the_service(admin_client, submit):
    job = submit("stop")
    response = _action(admin_client, "cancel_jobs", [job])
    assert "Cancelled: 1 job(s)." in response.content.decode()
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert Message.objects.get(pk=job.message_id).metadata["status"] == "cancelled"


def test_retry_action_queues_a_failed_job_again(admin_client, submit, runner_for):
    job = submit("flaky")
    run_pass(runner_for(FakeGenerator(failures=[RuntimeError("x")])))
    _action(admin_client, "retry_jobs", [job])
    job.refresh_from_db()
    assert (job.status, job.error) == ("queued", "")


def test_requeue_action_moves_a_job_to_the_end(admin_client, submit):
    first, second = submit("first"), submit("second")
    _action(admin_client, "requeue_jobs_at_end", [first])
    order = list(ImageJob.objects.filter(status="queued").order_by("sequence").values_list("pk", flat=True))
    assert order == [second.pk, first.pk]


def test_mark_error_action_fails_a_job_with_a_message(admin_client, submit):
    job = submit("bad")
    _action(admin_client, "mark_jobs_as_error", [job])
    job.refresh_from_db()
    assert job.status == "error" and job.error == "This image was stopped by an administrator."


def test_an_action_on_jobs_in_the_wrong_state_says_which_were_not_changed(admin_client, submit):
    job = submit("queued")
    response = _action(admin_client, "retry_jobs", [job])
    assert "Not changed" in response.content.decode()
    assert ImageJob.objects.get(pk=job.pk).status == "queued"


def test_messages_show_their_metadata_readable(admin_client, submit):
    job = submit("meta")
    body = admin_client.get(reverse("admin:chat_message_change", args=[job.message_id])).content.decode()
    assert "&quot;status&quot;: &quot;queued&quot;" in body


def test_staff_without_job_permissions_cannot_see_the_queue(client, db):
    staff = make_user("helper")
    staff.is_staff = True
    staff.save()
    client.force_login(staff)
    assert client.get(reverse("admin:generation_imagejob_queue")).status_code == 404


def test_the_job_list_shows_the_newest_first_with_its_prompt(admin_client, submit):
    older, newer = submit("an older lighthouse"), submit("a newer windmill")
    response = admin_client.get(reverse("admin:generation_imagejob_changelist"))
    body = response.content.decode()
    assert [job.pk for job in response.context["cl"].result_list][:2] == [newer.pk, older.pk]
    assert "column-short_prompt" in body
    assert body.index("a newer windmill") < body.index("an older lighthouse")


def test_a_read_only_job_page_has_no_save_button(admin_client, submit):
    job = submit("look only")
    body = admin_client.get(reverse("admin:generation_imagejob_change", args=[job.pk])).content.decode()
    assert "look only" in body
    assert 'name="_save"' not in body and 'name="_continue"' not in body


def _media_files(settings) -> set[str]:
    media = Path(settings.MEDIA_ROOT)
    return {str(p.relative_to(media)) for p in media.rglob("*") if p.is_file()} if media.exists() else set()


def test_a_post_to_a_job_page_is_refused_and_changes_nothing(admin_client, submit):
    job = submit("look only")
    url = reverse("admin:generation_imagejob_change", args=[job.pk])
    assert "Close" in admin_client.get(url).content.decode()
    response = admin_client.post(url, {"status": "error", "prompt": "changed", "_save": "Save"})
    assert response.status_code == 403
    job.refresh_from_db()
    assert (job.status, job.prompt) == ("queued", "look only")
    assert not LogEntry.objects.exists()


def test_the_admin_actions_still_work_where_the_pages_are_view_only(admin_client, submit):
    job = submit("stop me")
    _action(admin_client, "cancel_jobs", [job])
    job.refresh_from_db()
    assert job.status == "cancelled"


def test_deleting_jobs_in_admin_removes_their_messages_and_files_and_frees_the_queue(
    settings, admin_client, submit, runner_for, django_capture_on_commit_callbacks
):
    done = submit("finished")
    run_pass(runner_for(FakeGenerator()))
    done.refresh_from_db()
    waiting, kept = submit("waiting"), submit("kept")
    assert done.image.name in _media_files(settings)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:generation_imagejob_changelist"),
            {"action": "delete_selected", "_selected_action": [done.pk, waiting.pk], "post": "yes"},
            follow=True,
        )

    assert response.status_code == 200
    assert list(ImageJob.objects.values_list("pk", flat=True)) == [kept.pk]
    assert not Message.objects.filter(pk__in=[done.message_id, waiting.message_id]).exists()
    assert _media_files(settings) == set()
    assert selectors.queue_positions() == {kept.pk: 1}


def test_deleting_a_conversation_in_admin_removes_its_messages_jobs_and_files(
    settings, admin_client, alice_chat, bob_chat, submit, runner_for, django_capture_on_commit_callbacks
):
    submit("finished")
    run_pass(runner_for(FakeGenerator()))
    submit("waiting")
    bobs = submit("bob's", conversation=bob_chat)
    assert _media_files(settings)

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            reverse("admin:chat_conversation_changelist"),
            {"action": "delete_selected", "_selected_action": [alice_chat.pk], "post": "yes"},
            follow=True,
        )

    assert not Conversation.objects.filter(pk=alice_chat.pk).exists()
    assert not Message.objects.filter(conversation_id=alice_chat.pk).exists()
    assert list(ImageJob.objects.values_list("pk", flat=True)) == [bobs.pk]
    assert _media_files(settings) == set()


def test_a_message_page_cannot_be_saved_and_deleting_a_bot_message_deletes_its_job_and_image(
    settings, admin_client, submit, runner_for, django_capture_on_commit_callbacks
):
    job = submit("meta")
    run_pass(runner_for(FakeGenerator()))
    url = reverse("admin:chat_message_change", args=[job.message_id])
    assert 'name="_save"' not in admin_client.get(url).content.decode()
    assert admin_client.post(url, {"content": "edited", "_save": "Save"}).status_code == 403
    assert Message.objects.get(pk=job.message_id).content != "edited"
    assert _media_files(settings)

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(reverse("admin:chat_message_delete", args=[job.message_id]), {"post": "yes"})

    assert not ImageJob.objects.filter(pk=job.pk).exists()
    assert not Message.objects.filter(pk=job.message_id).exists()
    assert _media_files(settings) == set()


def test_the_queue_view_costs_the_same_queries_for_3_and_30_jobs(settings, admin_client, submit):
    settings.IMAGEGEN_MAX_PENDING_PER_USER = 100
    settings.IMAGEGEN_SUBMISSIONS_PER_MINUTE = 100
    url = reverse("admin:generation_imagejob_queue")

    def queries_for(total: int) -> int:
        while ImageJob.objects.filter(status="queued").count() < total:
            submit("one of many")
        with CaptureQueriesContext(connection) as queries:
            body = admin_client.get(url).content.decode()
        assert body.count("one of many") == total
        return len(queries)

    assert queries_for(3) == queries_for(30)


@pytest.mark.parametrize("how", ["delete page", "delete selected"])
def test_deleting_a_user_in_admin_stops_their_jobs_and_removes_their_images(
    settings, admin_client, submit, runner_for, bob_chat, django_capture_on_commit_callbacks, how
):
    finished = submit("alice's finished kite")
    run_pass(runner_for(FakeGenerator()))
    queued = submit("alice's waiting kite")
    bobs = submit("bob's kite", conversation=bob_chat)
    alice = finished.owner
    assert _media_files(settings)

    with django_capture_on_commit_callbacks(execute=True):
        if how == "delete page":
            response = admin_client.post(reverse("admin:auth_user_delete", args=[alice.pk]), {"post": "yes"})
        else:
            response = admin_client.post(
                reverse("admin:auth_user_changelist"),
                {"action": "delete_selected", "_selected_action": [alice.pk], "post": "yes"},
            )
    assert response.status_code == 302

    assert not ImageJob.objects.filter(pk__in=[finished.pk, queued.pk]).exists()
    assert not Conversation.objects.filter(owner_id=alice.pk).exists()
    assert _media_files(settings) == set(), "alice's image went with her"
    # Bob's job keeps its place, now first in the queue.
    assert selectors.queue_position(job=ImageJob.objects.get(pk=bobs.pk)) == 1


def test_under_the_fair_policy_the_queue_page_shows_the_workers_order_the_policy_and_gpu_shares(
    settings, admin_client, submit, bob_chat, runner_for
):
    settings.IMAGEGEN_QUEUE_POLICY = "fair"
    done = submit("done", steps=8)
    run_pass(runner_for(FakeGenerator()))
    now = timezone.now()  # the fake clock's run, as if it had just happened
    ImageJob.objects.filter(pk=done.pk).update(started_at=now - timedelta(seconds=3), finished_at=now)
    alices = [submit(f"alice {n}", steps=20) for n in range(3)]
    bobs = submit("bob", steps=20, conversation=bob_chat)
    body = admin_client.get(reverse("admin:generation_imagejob_queue")).content.decode()
    assert "Queue policy: <strong>fair (fair shares of GPU time)</strong>" in body
    # Alice has had her turn (the finished job): bob's one job goes first.
    order = [body.index(f"#{job.pk}<") for job in (bobs, *alices)]
    assert order == sorted(order)
    assert 'id="shares"' in body and "<td>alice</td><td>1</td>" in body and "100 %" in body
    assert ImageJob.objects.get(pk=done.pk).status == "complete"


def test_run_next_action_puts_a_job_first_and_cards_follow(admin_client, submit):
    first, second, third = submit("first"), submit("second"), submit("third")
    response = _action(admin_client, "run_jobs_next", [third])
    assert "To run next: 1 job(s)." in response.content.decode()
    assert [entry["job_id"] for entry in selectors.queue_eta()] == [third.pk, first.pk, second.pk]
    _action(admin_client, "run_jobs_next", [first, third])
    # Jobs to run next keep their own order among themselves.
    assert [entry["job_id"] for entry in selectors.queue_eta()] == [first.pk, third.pk, second.pk]
    _action(admin_client, "cancel_jobs", [second])
    refused = _action(admin_client, "run_jobs_next", [second]).content.decode()
    assert "Only queued jobs can be run next." in refused


def test_an_admin_sets_a_users_weight_on_their_page_and_a_bad_weight_is_refused(admin_client, alice):
    from generation.models import QueueWeight

    url = reverse("admin:auth_user_change", args=[alice.pk])
    page = admin_client.get(url).content.decode()
    assert "Queue weight (fair policy)" in page
    form = {
        "username": "alice",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "queue_weight-TOTAL_FORMS": "1",
        "queue_weight-INITIAL_FORMS": "0",
        "queue_weight-MIN_NUM_FORMS": "0",
        "queue_weight-MAX_NUM_FORMS": "1",
        "queue_weight-0-owner": str(alice.pk),
    }
    refused = admin_client.post(url, {**form, "queue_weight-0-weight": "0"})
    assert (
        refused.status_code == 200 and "Ensure this value is greater than or equal to 0.1." in refused.content.decode()
    )
    assert not QueueWeight.objects.exists()
    saved = admin_client.post(url, {**form, "queue_weight-0-weight": "2.5"})
    assert saved.status_code == 302
    assert QueueWeight.objects.get(owner=alice).weight == 2.5
    listing = admin_client.get(reverse("admin:generation_queueweight_changelist")).content.decode()
    assert "alice" in listing and 'value="2.5"' in listing
