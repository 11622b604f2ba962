"""What runs after a commit (broadcast requests, events, doorbells) never strands a job."""

import threading

import pytest
from django.db import connection, transaction

from generation.models import ImageJob, QueueTicket
from tests.fakes import FakeGenerator
from tests.helpers import run_pass


class _ConcurrentWriter:
    """Another connection that takes the database's write lock and holds it until released.

    On SQLite BEGIN IMMEDIATE takes the one write lock; on PostgreSQL the tables the
    worker writes are locked outright. Meanwhile the worker's connection waits at
    most 0.2 s for a lock, so what it runs then fails as a busy database would.
    """

    TABLES = "generation_queuebroadcast, generation_imagejob, chat_message, django_q_ormq"

    def __init__(self):
        self.acquired = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._hold)

    def _hold(self):
        try:
            with transaction.atomic():
                if connection.vendor == "postgresql":
                    with connection.cursor() as cursor:
                        cursor.execute(f"LOCK TABLE {self.TABLES} IN ACCESS EXCLUSIVE MODE")
                QueueTicket.objects.create()
                self.acquired.set()
                self.release.wait(30)
        finally:
            connection.close()

    def start(self):
        self.thread.start()
        assert self.acquired.wait(10), "the concurrent writer never got the lock"
        _lock_wait(short=True)

    def stop(self):
        _lock_wait(short=False)
        self.release.set()
        self.thread.join(30)


def _lock_wait(*, short: bool):
    # Straight on the driver's connection, so the statement wrapper below does not see it.
    if connection.vendor == "postgresql":
        connection.connection.execute("SET lock_timeout = '200ms'" if short else "SET lock_timeout = 0")
    else:
        connection.connection.execute("PRAGMA busy_timeout = 200" if short else "PRAGMA busy_timeout = 30000")


@pytest.mark.django_db(transaction=True)
def test_a_busy_database_right_after_the_claim_commits_does_not_strand_the_job(submit, runner_for):
    """The claim commits; a concurrent writer then holds the database while the work that
    follows the commit runs. That work fails, and the job still runs to the end."""
    job = submit("claimed while the database is busy")
    writer = _ConcurrentWriter()
    state = {"claimed": False, "triggered": False}

    def after_the_claim(execute, sql, params, many, context):
        if state["claimed"] and not state["triggered"] and not connection.in_atomic_block:
            state["triggered"] = True  # the first statement after the claim's commit
            writer.start()
        if sql.startswith('UPDATE "generation_imagejob" SET "status"') and "processing" in (params or ()):
            state["claimed"] = True
        return execute(sql, params, many, context)

    def first_step(step):
        if step == 1:
            writer.stop()  # the other writer finishes; the worker's writes wait for it again

    runner = runner_for(FakeGenerator(on_each_step=first_step))
    try:
        with connection.execute_wrapper(after_the_claim):
            ran = run_pass(runner)
    finally:
        if writer.thread.is_alive():
            writer.stop()

    assert state["triggered"], "the database was never busy after the claim"
    assert ran == job
    job.refresh_from_db()
    assert job.status == "complete", job.error_detail
    assert not ImageJob.objects.filter(status="processing").exists()
