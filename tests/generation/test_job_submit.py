import pytest
from django.core.exceptions import ValidationError

from chat.models import Message
from generation import services
from generation.broadcasts import queue_broadcast_run
from generation.models import ImageJob


def test_it_creates_the_user_message_the_assistant_message_and_the_job(alice, alice_chat, submit):
    job = submit("  a red fox in snow  ", steps=12, width=128, height=96, guidance=5.5, seed=99)

    user_message, assistant = Message.objects.filter(conversation=alice_chat)
    assert (user_message.role, user_message.content) == ("user", "a red fox in snow")
    assert assistant.role == "assistant"
    assert job.message == assistant
    assert (job.owner, job.status, job.prompt) == (alice, "queued", "a red fox in snow")
    assert (job.steps, job.width, job.height, job.guidance, job.seed) == (12, 128, 96, 5.5, 99)
    assert assistant.metadata["status"] == "queued"
    assert assistant.metadata["progress"] == 0
    assert assistant.metadata["job_id"] == job.pk
    assert assistant.metadata["prompt"] == "a red fox in snow"
    assert assistant.metadata["params"]["steps"] == 12
    assert assistant.metadata["created_at"]
    # The position's copy comes with the next queue broadcast, off the submit's path.
    queue_broadcast_run()
    assistant.refresh_from_db()
    assert assistant.metadata["queue_position"] == 1


def test_defaults_fill_what_is_not_given_and_a_random_seed_is_stored(alice_chat, submit):
    job = submit("a boat", steps=None, width=None, height=None)
    assert (job.model, job.width, job.height, job.steps, job.guidance, job.scheduler) == (
        "demo",
        512,
        512,
        20,
        7.0,
        "euler",
    )
    assert 0 <= job.seed < 2**32


def test_positions_count_every_users_queued_jobs_ahead(submit, bob_chat):
    first = submit("one")
    second = submit("two", conversation=bob_chat)
    third = submit("three")
    queue_broadcast_run()
    positions = [Message.objects.get(pk=job.message_id).metadata["queue_position"] for job in (first, second, third)]
    assert positions == [1, 2, 3]
    assert first.sequence < second.sequence < third.sequence


@pytest.mark.parametrize(
    "field,value",
    [
        ("prompt", ""),
        ("prompt", "   "),
        ("prompt", "x" * 2001),
        ("steps", 0),
        ("steps", 101),
        ("guidance", 31),
        ("guidance", "nan"),
        ("width", 100),
        ("height", 2056),
        ("seed", -1),
        ("seed", 2**32),
        ("model", "no-such-model"),
        ("scheduler", "nope"),
        ("width", "wide"),
    ],
)
def test_bad_input_gets_a_field_error_and_creates_nothing(alice_chat, submit, field, value):
    with pytest.raises(ValidationError) as caught:
        if field == "prompt":
            submit(value)
        else:
            submit(**{field: value})
    assert field in caught.value.message_dict
    assert not ImageJob.objects.exists()
    assert not Message.objects.exists()


def test_the_demo_model_has_a_size_limit(submit):
    with pytest.raises(ValidationError) as caught:
        submit(width=1536)
    assert caught.value.message_dict["width"] == ["Width: 64-1024, a multiple of 8."]


def test_a_user_cannot_queue_more_than_the_pending_cap(settings, submit, bob_chat):
    settings.IMAGEGEN_MAX_PENDING_PER_USER = 2
    submit("one")
    submit("two")
    with pytest.raises(services.JobRefused, match="already have 2 images waiting") as refused:
        submit("three")
    assert 1 <= refused.value.refusal.retry_after <= 120
    assert ImageJob.objects.count() == 2
    submit("bob is not capped by alice", conversation=bob_chat)


def test_it_rejects_another_users_conversation(bob, alice_chat):
    from generation.services import job_submit

    with pytest.raises(ValidationError):
        job_submit(user=bob, conversation=alice_chat, prompt="mine now")
    assert not ImageJob.objects.exists()


def test_a_user_sending_prompts_too_quickly_is_told_to_wait(settings, submit):
    settings.IMAGEGEN_SUBMISSIONS_PER_MINUTE = 3
    for n in range(3):
        submit(f"quick {n}")
    with pytest.raises(services.JobRefused, match="too quickly") as refused:
        submit("one too many")
    assert 1 <= refused.value.refusal.retry_after <= 60
    assert ImageJob.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_the_pending_cap_holds_when_one_user_submits_from_many_threads_at_once(settings, alice, alice_chat):
    import threading

    from django.db import connection

    from generation.services import job_submit

    settings.IMAGEGEN_MAX_PENDING_PER_USER = 3
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def submit_one(n):
        try:
            barrier.wait()
            job_submit(user=alice, conversation=alice_chat, prompt=f"burst {n}", steps=2, width=64, height=64)
            outcomes.append("queued")
        except services.JobRefused:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=submit_one, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["queued"] * 3 + ["refused"] * 5
    assert ImageJob.objects.count() == 3
    assert Message.objects.count() == 6


@pytest.mark.django_db(transaction=True)
def test_the_pending_cap_holds_when_many_failed_jobs_are_retried_at_once(settings, alice, alice_chat):
    import threading

    from django.db import connection

    from generation.services import JobError, job_retry, job_submit

    jobs = [job_submit(user=alice, conversation=alice_chat, prompt=f"failed {n}", steps=2).jobs[0] for n in range(8)]
    ImageJob.objects.update(status="error", error="it broke")
    settings.IMAGEGEN_MAX_PENDING_PER_USER = 3
    barrier = threading.Barrier(len(jobs))
    outcomes: list[str] = []

    def retry_one(job):
        try:
            barrier.wait()
            job_retry(job=job)
            outcomes.append("queued")
        except JobError as exc:
            assert "already have 3 images waiting" in str(exc)
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=retry_one, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["queued"] * 3 + ["refused"] * 5
    assert ImageJob.objects.filter(status="queued").count() == 3
