import pytest

from generation.models import ImageJob
from generation.tasks import process_next_job
from tests.fakes import FakeGenerator
from tests.helpers import run_pass


@pytest.mark.django_db(transaction=True)
def test_the_job_table_decides_the_order_whatever_the_broker_delivers(monkeypatch, submit, bob_chat):
    """Doorbells carry no job: one delivery runs the whole backlog in order, extra ones find nothing."""
    generator = FakeGenerator()
    monkeypatch.setattr("generation.worker.get_generator", lambda: generator)
    jobs = [submit("first"), submit("second", conversation=bob_chat), submit("third")]

    results = [process_next_job() for _ in range(3)]  # three deliveries for three jobs

    assert results == [[jobs[0].pk, jobs[1].pk, jobs[2].pk], [], []]
    assert generator.prompts == ["first", "second", "third"]
    assert list(ImageJob.objects.values_list("status", "attempts")) == [("complete", 1)] * 3


def test_a_job_submitted_while_others_wait_goes_to_the_back(runner_for, submit):
    runner = runner_for(FakeGenerator())
    first = submit("first")
    second = submit("second")
    assert run_pass(runner) == first
    third = submit("third")
    assert [run_pass(runner), run_pass(runner)] == [second, third]
    assert run_pass(runner) is None
