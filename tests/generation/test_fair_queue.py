"""The queue policies (generation/fairness.py) through the services the worker and the
pages use: `job_submit` gives each job its place, `jobs_claim` takes the worker's
next pass, `queue_eta` gives positions and ETAs.

The property tests run random backlogs: users with weights, jobs whose estimated GPU
seconds differ (their step counts; the estimator has no history, so a job's seconds
are its steps times the default seconds per step), arriving in any order. Each claimed
job is taken to use exactly its estimated GPU seconds.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat.services import conversation_create
from generation import fairness, selectors, services
from generation.models import ImageJob, QueueClock, QueueWeight, Worker
from generation.tasks import process_next_job
from tests.conftest import make_user
from tests.fakes import FakeGenerator
from tests.servers import in_postgres_pass

EXAMPLES = hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
WEIGHTS = st.sampled_from([0.5, 1.0, 1.0, 2.0, 3.0])
# A user's backlog: the step counts of their jobs (GPU seconds are proportional).
BACKLOG = st.lists(st.integers(min_value=2, max_value=40), min_size=2, max_size=7)


@pytest.fixture
def fair(settings):
    settings.IMAGEGEN_QUEUE_POLICY = "fair"
    settings.IMAGEGEN_MAX_PENDING_PER_USER = 1000
    settings.IMAGEGEN_SUBMISSIONS_PER_MINUTE = 100_000
    return settings


@pytest.fixture
def people(db):
    """Five users with a conversation each."""
    users = [make_user(name) for name in ("ann", "ben", "cat", "dan", "eve")]
    return [(user, conversation_create(owner=user, title="fair")) for user in users]


def _reset(weights: list[float], people) -> None:
    ImageJob.objects.all().delete()
    QueueClock.objects.all().delete()
    QueueWeight.objects.all().delete()
    for (user, _), weight in zip(people, weights, strict=False):
        QueueWeight.objects.create(owner=user, weight=weight)


def _submit(person, steps: int, *, count: int = 1, **params) -> list[ImageJob]:
    user, chat = person
    params = {"width": 64, "height": 64, **params}
    return services.job_submit(user=user, conversation=chat, prompt="p", steps=steps, count=count, **params).jobs


def _seconds(job: ImageJob) -> float:
    """The job's estimated GPU seconds (what the policy charges its owner)."""
    return selectors.pass_seconds(selectors.duration_estimator(), job, 1)


def _claim(*, max_batch: int = 1) -> list[ImageJob]:
    """The worker's next pass; the jobs in it end at once."""
    claimed = services.jobs_claim(worker="test:1", max_batch=max_batch)
    ImageJob.objects.filter(pk__in=[job.pk for job in claimed]).update(status="complete")
    return claimed


def _worker(max_batch: int) -> None:
    """A live worker that makes up to `max_batch` images a pass (what the ETA plans with)."""
    now = timezone.now()
    Worker.objects.create(
        name="test:1", host="t", pid=1, device="cpu", started_at=now, last_seen_at=now, max_batch=max_batch
    )


def _arrivals(data, people, backlogs: list[list[int]]) -> list[tuple[int, int]]:
    """(user index, steps) of every job, users' own jobs in order, interleaved at random."""
    queues = [list(backlog) for backlog in backlogs]
    order = []
    while any(queues):
        user = data.draw(st.sampled_from([n for n, queue in enumerate(queues) if queue]))
        order.append((user, queues[user].pop(0)))
    return order


@EXAMPLES
@given(data=st.data(), users=st.integers(min_value=2, max_value=4))
def test_backlogged_users_get_their_weighted_share_of_gpu_time(fair, people, data, users):
    weights = [data.draw(WEIGHTS) for _ in range(users)]
    backlogs = [data.draw(BACKLOG) for _ in range(users)]
    _reset(weights, people)
    for user, steps in _arrivals(data, people, backlogs):
        _submit(people[user], steps)
    owner_index = {people[n][0].pk: n for n in range(users)}
    left = [len(backlog) for backlog in backlogs]
    spent = [0.0] * users
    # Claim while every user is still backlogged: the window ends with the claim that
    # takes some user's last job.
    while all(left):
        [job] = _claim()
        user = owner_index[job.owner_id]
        spent[user] += _seconds(job)
        left[user] -= 1
    total = sum(spent)
    largest = [max(backlog) * _seconds_per_step() for backlog in backlogs]
    for user in range(users):
        share = weights[user] / sum(weights) * total
        # Start-time fair queuing's bound: one job of the user's own, and one of the
        # user whose jobs are longest for their weight, scaled to this user's weight.
        slack = largest[user] + weights[user] * max(largest[n] / weights[n] for n in range(users))
        assert abs(spent[user] - share) <= 0.10 * share + slack, (weights, backlogs, spent)


def _seconds_per_step() -> float:
    return selectors.duration_estimator()("demo", 64, 64, 1)


@EXAMPLES
@given(data=st.data(), users=st.integers(min_value=1, max_value=4), newcomer_steps=st.integers(2, 40))
def test_a_new_users_first_job_starts_after_at_most_one_job_of_each_other_user(
    fair, people, data, users, newcomer_steps
):
    weights = [data.draw(WEIGHTS) for _ in range(users)]
    backlogs = [data.draw(BACKLOG) for _ in range(users)]
    _reset(weights, people)
    for user, steps in _arrivals(data, people, backlogs):
        _submit(people[user], steps)
    for _ in range(data.draw(st.integers(min_value=0, max_value=sum(map(len, backlogs)) - 1))):
        _claim()
    [newcomer_job] = _submit(people[4], newcomer_steps)
    before = Counter()
    while (job := _claim()[0]).pk != newcomer_job.pk:
        before[job.owner_id] += 1
    assert all(count <= 1 for count in before.values()), before


@EXAMPLES
@given(
    data=st.data(),
    users=st.integers(min_value=1, max_value=4),
    max_batch=st.sampled_from([1, 2, 4]),
    policy=st.sampled_from(["fifo", "fair"]),
)
def test_positions_are_1_to_n_and_the_order_jobs_start_in(fair, people, data, users, max_batch, policy):
    """With batching too: a pass's jobs start together, the head first."""
    fair.IMAGEGEN_QUEUE_POLICY = policy
    weights = [data.draw(WEIGHTS) for _ in range(users)]
    # Few step counts, so that jobs can share a pass.
    backlogs = [data.draw(st.lists(st.sampled_from([4, 8, 12]), min_size=1, max_size=6)) for _ in range(users)]
    _reset(weights, people)
    Worker.objects.all().delete()
    now = timezone.now()
    Worker.objects.create(
        name="test:1", host="test", pid=1, device="cpu", started_at=now, last_seen_at=now, max_batch=max_batch
    )
    for user, steps in _arrivals(data, people, backlogs):
        _submit(people[user], steps)
    entries = selectors.queue_eta()
    positions = {entry["job_id"]: entry["position"] for entry in entries}
    assert sorted(positions.values()) == list(range(1, len(positions) + 1))
    if max_batch == 1:  # the one-count position (a reply's) agrees
        counted = {pk: selectors.queue_position(job=ImageJob.objects.get(pk=pk)) for pk in positions}
        assert counted == positions
    started = []
    while claimed := _claim(max_batch=max_batch):
        started += [job.pk for job in claimed]
    if policy == "fair" or max_batch == 1:  # under fifo positions stay the FIFO ranks
        assert started == sorted(positions, key=positions.get)


@EXAMPLES
@given(data=st.data(), users=st.integers(min_value=1, max_value=4))
def test_fifo_takes_jobs_exactly_in_submission_order_whatever_the_weights(fair, people, data, users):
    fair.IMAGEGEN_QUEUE_POLICY = "fifo"
    weights = [data.draw(WEIGHTS) for _ in range(users)]
    backlogs = [data.draw(BACKLOG) for _ in range(users)]
    _reset(weights, people)
    submitted = [_submit(people[user], steps)[0].pk for user, steps in _arrivals(data, people, backlogs)]
    assert [entry["job_id"] for entry in selectors.queue_eta()] == submitted
    assert [entry["position"] for entry in selectors.queue_eta()] == list(range(1, len(submitted) + 1))
    assert [_claim()[0].pk for _ in submitted] == submitted


def test_a_heavy_users_backlog_does_not_hold_up_a_light_user(fair, people):
    """Eight long jobs of one user, then one short job of another: it runs second."""
    heavy = [_submit(people[0], 40)[0] for _ in range(8)]
    light = _submit(people[1], 4)[0]
    entries = {entry["job_id"]: entry for entry in selectors.queue_eta()}
    assert entries[light.pk]["position"] == 2
    assert [entries[job.pk]["position"] for job in heavy] == [1, *range(3, 10)]
    assert entries[light.pk]["estimated_seconds"] < entries[heavy[1].pk]["estimated_seconds"]
    assert [_claim()[0].pk for _ in range(2)] == [heavy[0].pk, light.pk]


def test_an_idle_user_banks_no_credit_and_a_weight_buys_a_larger_share(fair, people):
    ann, ben = people[0], people[1]
    QueueWeight.objects.create(owner=ann[0], weight=2)
    for _ in range(4):
        _submit(ben, 10)
    for _ in range(3):  # ann was idle while ben's jobs ran: no credit for it
        _claim()
    for _ in range(4):
        _submit(ann, 10)
    order = ["ann" if _claim()[0].owner_id == ann[0].pk else "ben" for _ in range(5)]
    # ann enters at the virtual time (ben's third job's turn), not at the start, and
    # then goes at twice ben's rate: two of ann's for each of ben's.
    assert order == ["ann", "ann", "ben", "ann", "ann"]


def test_a_job_put_back_keeps_its_tag_and_try_again_takes_a_new_one(fair, people):
    first = _submit(people[0], 10)[0]
    second = _submit(people[1], 10)[0]
    [claimed] = services.jobs_claim(worker="test:1")
    assert claimed.pk == first.pk
    services.job_hand_back(job_id=first.pk)  # its worker is stopping
    assert [_claim()[0].pk, _claim()[0].pk] == [first.pk, second.pk]
    failed = _submit(people[0], 10)[0]
    waiting = _submit(people[1], 10)[0]
    services.job_fail(job_id=failed.pk, error="x")
    later = _submit(people[1], 10)[0]
    retried = services.job_retry(job=ImageJob.objects.get(pk=failed.pk))
    assert retried.sequence > later.sequence  # at the back of its owner's turns: after waiting
    assert [job.pk for job in (_claim()[0], _claim()[0], _claim()[0])] == [waiting.pk, retried.pk, later.pk]


def test_run_next_puts_a_job_first_under_either_policy_and_spends_nobodys_turn(fair, people):
    jobs = [_submit(people[0], 10)[0] for _ in range(3)] + [_submit(people[1], 10)[0]]
    services.job_run_next(job=jobs[2])
    positions = {entry["job_id"]: entry["position"] for entry in selectors.queue_eta()}
    assert positions[jobs[2].pk] == 1
    clock = fairness.virtual_time()
    assert _claim()[0].pk == jobs[2].pk
    assert fairness.virtual_time() == clock
    fair.IMAGEGEN_QUEUE_POLICY = "fifo"
    services.job_run_next(job=jobs[3])
    assert _claim()[0].pk == jobs[3].pk
    with pytest.raises(services.JobError, match="Only queued jobs can be run next"):
        services.job_run_next(job=jobs[3])


def test_a_pass_takes_other_users_jobs_before_the_heads_owners_extras(fair, people):
    now = timezone.now()
    Worker.objects.create(
        name="test:1", host="test", pid=1, device="cpu", started_at=now, last_seen_at=now, max_batch=2
    )
    _submit(people[1], 30)
    services.jobs_claim(worker="test:0")  # ben's long job runs: his next turn is after it
    ann_jobs = _submit(people[0], 8, count=3)
    ben_job = _submit(people[1], 8)[0]
    assert ben_job.fair_tag > ann_jobs[2].fair_tag  # last in the fair order
    positions = {entry["job_id"]: entry["position"] for entry in selectors.queue_eta()}
    assert [positions[job.pk] for job in (ann_jobs[0], ben_job, ann_jobs[1], ann_jobs[2])] == [1, 2, 3, 4]
    assert [job.pk for job in services.jobs_claim(worker="test:1", max_batch=2)] == [ann_jobs[0].pk, ben_job.pk]


@pytest.mark.django_db(transaction=True)
def test_the_worker_takes_a_light_users_job_between_a_heavy_users(settings, monkeypatch, alice_chat, bob_chat):
    """Through the gpu cluster's task: bob's one image is the second made."""
    settings.IMAGEGEN_QUEUE_POLICY = "fair"
    generator = FakeGenerator()
    monkeypatch.setattr("generation.worker.get_generator", lambda: generator)
    for n in range(4):
        services.job_submit(
            user=alice_chat.owner, conversation=alice_chat, prompt=f"alice {n}", steps=20, width=64, height=64
        )
    services.job_submit(user=bob_chat.owner, conversation=bob_chat, prompt="bob", steps=4, width=64, height=64)
    process_next_job()
    assert generator.prompts[:2] == ["alice 0", "bob"]
    assert ImageJob.objects.filter(status="complete").count() == 5


@in_postgres_pass
@pytest.mark.django_db(transaction=True)
def test_concurrent_submissions_and_claims_keep_every_users_order_and_lose_nothing(fair):
    """8 threads submit for 4 users while a worker claims: each user's tags are unique
    and in the order of their submissions, every job runs once, and each user's jobs
    start in their order."""
    people = [(user, conversation_create(owner=user, title="c")) for user in map(make_user, ("u1", "u2", "u3", "u4"))]
    per_thread = 6
    barrier = threading.Barrier(9)
    done = threading.Event()
    errors: list[BaseException] = []
    claims: list[tuple[int, int]] = []  # (job id, owner id), in claim order

    def submitter(person, seed: int) -> None:
        try:
            barrier.wait()
            for n in range(per_thread):
                _submit(person, 4 + (seed * 7 + n * 3) % 20)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    def claimer() -> None:
        try:
            barrier.wait()
            while True:
                claimed = services.jobs_claim(worker="test:1")
                if not claimed:
                    if done.is_set():
                        return
                    time.sleep(0.005)
                    continue
                claims.extend((job.pk, job.owner_id) for job in claimed)
                ImageJob.objects.filter(pk__in=[job.pk for job in claimed]).update(status="complete")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=submitter, args=(people[n % 4], n)) for n in range(8)]
    worker = threading.Thread(target=claimer)
    for thread in [*threads, worker]:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    done.set()
    worker.join(timeout=120)

    assert not errors, errors
    jobs = list(ImageJob.objects.values("pk", "owner_id", "fair_tag", "sequence", "status", "attempts"))
    assert len(jobs) == 8 * per_thread
    assert {(job["status"], job["attempts"]) for job in jobs} == {("complete", 1)}
    assert sorted(pk for pk, _ in claims) == sorted(job["pk"] for job in jobs), "a job skipped or claimed twice"
    claim_order = {pk: n for n, (pk, _) in enumerate(claims)}
    by_owner = defaultdict(list)
    for job in jobs:
        by_owner[job["owner_id"]].append(job)
    for owned in by_owner.values():
        by_sequence = sorted(owned, key=lambda job: job["sequence"])
        tags = [job["fair_tag"] for job in by_sequence]
        assert len(set(tags)) == len(tags) and tags == sorted(tags)
        assert [claim_order[job["pk"]] for job in by_sequence] == sorted(claim_order[job["pk"]] for job in owned)


def test_the_share_of_gpu_time_over_the_last_hour(fair, people):
    now = timezone.now()
    jobs = _submit(people[0], 4, count=2) + _submit(people[1], 4)
    spans = [(jobs[0], 30, 2), (jobs[1], 30, 2), (jobs[2], 20, 1)]
    for job, seconds, batch in spans:
        ImageJob.objects.filter(pk=job.pk).update(
            status="complete", started_at=now - timedelta(seconds=seconds), finished_at=now, batch_size=batch
        )
    shares = fairness.gpu_shares(now=now)
    assert [(share["username"], round(share["seconds"]), round(share["share"], 2)) for share in shares] == [
        ("ann", 30, 0.6),
        ("ben", 20, 0.4),
    ]
