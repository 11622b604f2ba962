"""Several images of one prompt: n jobs that share one message and one card."""

import io

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.urls import reverse

from chat.models import Message
from generation import selectors, services
from generation.models import ImageJob
from tests.fakes import FakeGenerator
from tests.helpers import run_pass


def test_a_prompt_asking_for_four_images_makes_four_jobs_with_consecutive_seeds_in_one_message(alice_chat, submit):
    job = submit("four kites", count=4, seed=10)

    jobs = list(ImageJob.objects.order_by("sequence"))
    assert [each.seed for each in jobs] == [10, 11, 12, 13]
    assert [each.image_index for each in jobs] == [0, 1, 2, 3]
    assert {each.message_id for each in jobs} == {job.message_id}
    assert Message.objects.filter(role="assistant").count() == 1
    message = Message.objects.get(pk=job.message_id)
    assert message.content == "Your 4 images are queued."
    assert message.metadata["job_ids"] == [each.pk for each in jobs]
    assert message.metadata["seeds"] == [10, 11, 12, 13]
    assert [selectors.queue_position(job=each) for each in jobs] == [1, 2, 3, 4], "next to each other"


def test_seeds_past_the_largest_wrap_around(submit):
    submit("wrapping", count=3, seed=2**32 - 2)
    assert list(ImageJob.objects.order_by("image_index").values_list("seed", flat=True)) == [2**32 - 2, 2**32 - 1, 0]


@pytest.mark.parametrize("count", [0, 11, -1, "many"])
def test_a_count_outside_1_to_10_is_refused_with_a_field_error_and_creates_nothing(submit, count):
    with pytest.raises(ValidationError) as refused:
        submit("too many", count=count)
    assert refused.value.message_dict["count"] == ["Images: 1-10."]
    assert not ImageJob.objects.exists() and not Message.objects.exists()


def test_the_pending_cap_counts_images_so_a_prompt_that_would_pass_it_is_refused(settings, submit):
    settings.IMAGEGEN_MAX_PENDING_PER_USER = 6
    submit("three", count=3)
    with pytest.raises(services.JobRefused, match="4 more would pass your limit of 6"):
        submit("four more", count=4)
    assert ImageJob.objects.count() == 3
    submit("three more", count=3)
    assert ImageJob.objects.count() == 6


def test_the_rate_limit_counts_prompts_not_images(settings, submit):
    settings.IMAGEGEN_SUBMISSIONS_PER_MINUTE = 2
    submit("first", count=4)
    submit("second", count=4)
    with pytest.raises(services.JobRefused, match="too quickly"):
        submit("third")


def test_each_image_is_cancelled_and_retried_on_its_own_and_the_message_tells_the_whole(submit, runner_for):
    job = submit("three boats", count=3)
    first, second, third = ImageJob.objects.filter(message_id=job.message_id).order_by("sequence")
    services.job_cancel(job=second)
    for _ in range(2):
        run_pass(runner_for(FakeGenerator()))

    states = dict(ImageJob.objects.values_list("pk", "status"))
    assert [states[each.pk] for each in (first, second, third)] == ["complete", "cancelled", "complete"]
    message = Message.objects.get(pk=job.message_id)
    assert message.content == "2 of 3 images are ready."
    assert message.metadata["status"] == "complete"
    assert message.metadata["images"][str(second.pk)]["status"] == "cancelled"
    assert message.metadata["images"][str(first.pk)]["image_url"] == reverse("generation:job_image", args=[first.pk])

    services.job_retry(job=ImageJob.objects.get(pk=second.pk))
    message.refresh_from_db()
    assert message.metadata["status"] == "queued"
    run_pass(runner_for(FakeGenerator()))
    message.refresh_from_db()
    assert message.content == "Your 3 images are ready."


def test_the_page_shows_one_card_per_image_under_one_heading(client, alice, submit):
    job = submit("two owls", count=2)
    client.force_login(alice)
    body = client.get(reverse("chat:conversation", args=[job.conversation_id])).content.decode()
    assert body.count('data-testid="job-group"') == 1
    assert body.count('class="job-card') == 2
    assert "Image 1 of 2" in body and "Image 2 of 2" in body and "2 images" in body


def test_the_composer_asks_how_many_images_and_the_answer_holds_all_their_cards(client, alice, alice_chat):
    client.force_login(alice)
    page = client.get(reverse("chat:conversation", args=[alice_chat.pk])).content.decode()
    assert 'name="count"' in page
    response = client.post(
        reverse("chat:job_submit", args=[alice_chat.pk]),
        {"prompt": "three foxes", "count": "3", "width": "64", "height": "64", "steps": "2"},
        headers={"X-Requested-With": "fetch"},
    )
    assert response.status_code == 201
    body = response.content.decode()
    assert body.count('class="job-card') == 3
    assert "Position: 1" in body and "Position: 3" in body


def test_deleting_one_image_of_a_prompt_keeps_the_message_and_the_other_images(submit):
    job = submit("two ducks", count=2)
    first, second = ImageJob.objects.filter(message_id=job.message_id).order_by("sequence")
    services.jobs_delete(jobs=ImageJob.objects.filter(pk=first.pk))
    assert list(ImageJob.objects.values_list("pk", flat=True)) == [second.pk]
    assert Message.objects.filter(pk=job.message_id).exists()
    services.jobs_delete(jobs=ImageJob.objects.filter(pk=second.pk))
    assert not Message.objects.filter(pk=job.message_id).exists()


def test_generate_makes_several_images_of_one_prompt(alice):
    out = io.StringIO()
    call_command("generate", "three hills", "--count", "3", "--seed", "7", "--user", "alice", stdout=out)
    assert "Queued jobs" in out.getvalue() and "(seeds 7-9)" in out.getvalue()
    assert ImageJob.objects.count() == 3


def test_admin_and_the_queue_command_show_which_jobs_ran_together(settings, client, submit, runner_for):
    from tests.conftest import make_user

    settings.IMAGEGEN_MAX_BATCH = 4
    job = submit("together", count=3)
    alone = submit("another size", width=128)
    run_pass(runner_for(FakeGenerator()))
    run_pass(runner_for(FakeGenerator()))
    batch = ImageJob.objects.get(pk=job.pk).batch

    out = io.StringIO()
    call_command("queue", stdout=out)
    ids = ", ".join(str(pk) for pk in ImageJob.objects.filter(message_id=job.message_id).values_list("pk", flat=True))
    assert f"Ran together: jobs {ids} (pass {batch})" in out.getvalue()

    root = make_user("root")
    root.is_staff = root.is_superuser = True
    root.save()
    client.force_login(root)
    listing = client.get(reverse("admin:generation_imagejob_changelist")).content.decode()
    assert f"3 images ({batch})" in listing and "alone" in listing
    same_pass = client.get(reverse("admin:generation_imagejob_changelist") + f"?q={batch}").content.decode()
    assert "3 image jobs" in same_pass
    assert ImageJob.objects.get(pk=alone.pk).batch_size == 1


@pytest.mark.django_db(transaction=True)
def test_images_of_one_prompt_finishing_at_the_same_moment_leave_the_message_complete(submit):
    import threading

    from django.db import connection

    job = submit("four at once", count=4)
    jobs = services.jobs_claim(worker="w:1", max_batch=4)
    assert len(jobs) == 4
    start = threading.Barrier(4)
    errors = []

    def complete(job_id):
        try:
            start.wait()
            services.job_complete(job_id=job_id, png=b"\x89PNG fake")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=complete, args=(each.pk,)) for each in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    message = Message.objects.get(pk=job.message_id)
    assert message.metadata["status"] == "complete"
    assert message.content == "Your 4 images are ready."
    assert {entry["status"] for entry in message.metadata["images"].values()} == {"complete"}
