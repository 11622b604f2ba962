"""/healthz for load balancers and /metrics for Prometheus."""

import ipaddress

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from generation import workers
from generation.models import CircuitBreaker
from generation.worker import JobRunner
from tests.fakes import FakeGenerator
from tests.helpers import LAYER_DATABASES, run_pass

pytestmark = [pytest.mark.configured_layer, pytest.mark.django_db(databases=LAYER_DATABASES)]


def test_healthz_is_200_when_everything_answers_and_a_worker_beats(client):
    workers.worker_register(name="gpu-a:1", device="cuda:0")
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert {name for name, check in body["checks"].items() if check["ok"]} == {
        "database",
        "broker",
        "channel_layer",
        "workers",
    }
    assert body["checks"]["workers"]["live"] == 1


def test_healthz_is_503_and_says_what_is_wrong_without_secrets(client, settings, monkeypatch):
    from generation import monitoring

    def broken():
        raise ConnectionError("redis://:hunter2@10.0.0.5:6379/0 refused")

    monkeypatch.setitem(monitoring.CHECKS, "broker", broken)
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["checks"]["broker"] == {"ok": False, "error": "ConnectionError (see the server log)"}
    assert body["checks"]["workers"] == {"ok": False, "error": "no gpu worker has beaten recently"}
    assert "hunter2" not in response.content.decode()


def _metrics(client, **headers) -> dict:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def test_metrics_count_the_queue_outcomes_times_breaker_and_workers(transactional_db, client, submit):
    submit("done")
    run_pass(JobRunner(FakeGenerator()))  # on the real clock: finished within the window
    submit("broken")
    run_pass(JobRunner(FakeGenerator(failures=[RuntimeError("x")])))
    submit("waiting one")
    submit("waiting two")
    workers.worker_register(name="gpu-a:1", device="cuda:0")
    CircuitBreaker.objects.update_or_create(name="generation", defaults={"state": "open"})

    samples = _metrics(client)

    assert samples["imagegen_queue_depth[]"] == 2
    assert samples["imagegen_jobs_processing[]"] == 0
    assert samples["imagegen_jobs_total[('outcome', 'complete')]"] == 1
    assert samples["imagegen_jobs_total[('outcome', 'error')]"] == 1
    assert samples["imagegen_jobs_total[('outcome', 'cancelled')]"] == 0
    assert samples["imagegen_job_run_seconds_bucket[('le', '+Inf')]"] == 2
    assert samples["imagegen_job_wait_seconds_bucket[('le', '+Inf')]"] == 2
    assert samples["imagegen_breaker_state[('state', 'open')]"] == 1
    assert samples["imagegen_breaker_state[('state', 'closed')]"] == 0
    assert samples["imagegen_workers_live[]"] == 1


def test_metrics_refuse_other_addresses_without_the_token(settings):
    settings.IMAGEGEN_METRICS_TOKEN = "s3cret-token"
    settings.IMAGEGEN_METRICS_ALLOWED_IPS = [ipaddress.ip_network("10.1.0.0/16")]
    outsider = Client(REMOTE_ADDR="203.0.113.9")
    assert outsider.get("/metrics").status_code == 403
    assert outsider.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert outsider.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200


def test_a_bad_allow_list_stops_start_up_with_the_variables_name(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from imagegen_site.settings import env_networks

    monkeypatch.setenv("IMAGEGEN_METRICS_ALLOWED_IPS", "10.0.0.0/8,not-an-address")
    with pytest.raises(ImproperlyConfigured, match="IMAGEGEN_METRICS_ALLOWED_IPS"):
        env_networks("IMAGEGEN_METRICS_ALLOWED_IPS", [])
