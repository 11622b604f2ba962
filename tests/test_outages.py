"""The whole service through a PostgreSQL restart and a Redis restart, for real.

The production processes run on a PostgreSQL and a Redis of their own
(tests/outage_stack.py), which the test stops and starts while a job is in flight.
Needs PostgreSQL's and Redis' server programs; runs in the PostgreSQL + Redis pass.
"""

from tests.servers import in_postgres_pass

pytestmark = in_postgres_pass


def test_a_postgresql_restart_and_a_redis_restart_cost_no_image():
    from tests.outage_stack import run_outages

    report = run_outages([("postgres", 8), ("redis", 5)], jobs=24)
    rows = report["rows"]

    # Every job completed once, with one image, and its message says so.
    assert [row["status"] for row in rows] == ["complete"] * 24, [(r["id"], r["status"], r["error"]) for r in rows]
    assert [row["attempts"] for row in rows] == [1] * 24, "a job was put back with its attempt counted"
    assert report["passes"] == 24, "an image was made twice"
    assert report["pngs"] == 24
    for row in rows:
        metadata = row["metadata"]
        assert metadata["status"] == "complete" and metadata["progress"] == 100
        assert metadata["image_url"] == f"/jobs/{row['id']}/image.png"
        assert not metadata.get("queue_position") and not metadata.get("error")

    postgres, redis = report["outages"]
    for outage in (postgres, redis):
        # The worker is at work again within seconds of the server's return.
        assert outage["next_started_after_s"] is not None and outage["next_started_after_s"] < 10, outage
        # /healthz answers fast throughout, 503 while the server is away, 200 soon after.
        assert outage["health_during"], "no health answer while the server was down"
        assert {status for status, _ in outage["health_during"]} == {503}, outage["health_during"]
        assert max(seconds for _, seconds in outage["health_during"]) < 2, outage["health_during"]
        assert outage["health_200_after_s"] is not None and outage["health_200_after_s"] < 10, outage
    assert report["health_max_s"] < 2

    # Each outage is logged once when it starts and once when it ends, no traceback per write.
    gpu = report["logs"]["gpu"]
    assert "Traceback" not in gpu, gpu[-3000:]
    assert 2 <= sum(1 for line in gpu.splitlines() if "Outage" in line) <= 8, gpu[-3000:]
