"""The GPU worker's work per job does not grow with the queue behind it."""

import time

from tests.fakes import FakeGenerator
from tests.helpers import QueryCounter, run_pass


def _one_job(runner, layer_sends):
    sends_before = len(layer_sends)
    with QueryCounter() as queries:
        assert run_pass(runner) is not None
    return queries, len(layer_sends) - sends_before


def test_the_worker_does_the_same_work_per_job_with_3_or_60_jobs_waiting(
    settings, monkeypatch, submit, bob_chat, runner_for
):
    settings.IMAGEGEN_MAX_PENDING_PER_USER = 100
    settings.IMAGEGEN_SUBMISSIONS_PER_MINUTE = 100
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    sends = []
    real_send = layer.group_send

    async def counting(group, message):
        sends.append(message["event"]["type"])
        await real_send(group, message)

    monkeypatch.setattr(layer, "group_send", counting)
    # Steps that take a little time, as on a device (30 ms, longer than a PostgreSQL write):
    # the bookkeeper keeps up and writes every step it is given, so the count does not
    # depend on how far behind it fell (a progress still waiting is merged with the next).
    runner = runner_for(FakeGenerator(on_each_step=lambda step: time.sleep(0.03)))
    for n in range(4):
        submit(f"short queue {n}", steps=25, conversation=bob_chat if n % 2 else None)
    run_pass(runner)  # warm: the breaker row and the first doorbell exist from here on

    short, short_sends = _one_job(runner, sends)
    for n in range(60):
        submit(f"long queue {n}", steps=25, conversation=bob_chat if n % 2 else None)
    long, long_sends = _one_job(runner, sends)

    # Both threads of the worker are counted: the device's (claim) and the bookkeeper's
    # (progress, completion).
    assert short.by_thread.get("bookkeeper", 0) > 0 and short.by_thread.get("MainThread", 0) > 0
    assert (long.total, long_sends) == (short.total, short_sends), (
        f"queries and events per job: {short.by_thread}, {short_sends} with 3 waiting; "
        f"{long.by_thread}, {long_sends} with 60"
    )
    assert "queue.positions" not in sends, "positions are broadcast off the worker's path"
