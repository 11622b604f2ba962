"""The two APIs' answers that need no worker: authentication, error shapes, bad input,
caps, listings, and per-user progress and interrupt."""

import base64
import json

import anyio
import pytest
from django.test import Client

from chat.models import Conversation
from generation import retention, services
from generation.api import a1111
from generation.api.auth import api_key_create, api_key_revoke
from generation.api.jobs import api_jobs_submit, request_key
from generation.models import ImageJob, JobPreview
from generation.worker import JobRunner
from tests.fakes import FakeGenerator
from tests.generation.test_job_form import A1111_SAMPLERS
from tests.helpers import LAYER_DATABASES, run_pass

pytestmark = pytest.mark.django_db(transaction=True, databases=LAYER_DATABASES)


@pytest.fixture
def alice_key(alice):
    return api_key_create(owner=alice)


@pytest.fixture
def bob_key(bob):
    return api_key_create(owner=bob)


def _openai(key: str | None = None, **headers) -> Client:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return Client(headers=headers)


def _a1111(username: str, key: str) -> Client:
    token = base64.b64encode(f"{username}:{key}".encode()).decode()
    return Client(headers={"Authorization": f"Basic {token}"})


def _post(client: Client, path: str, body) -> object:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(path, data=data, content_type="application/json")


def _openai_error(response, status: int, param=None) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    return error


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer ig_wrong"},
        {"Authorization": "Basic x"},
    ],
)
def test_openai_refuses_a_missing_empty_or_wrong_key(headers, alice_key):
    client = Client(headers=headers)

    for response in (
        _post(client, "/v1/images/generations", {"prompt": "a fox"}),
        client.get("/v1/models"),
    ):
        assert _openai_error(response, 401)["code"] == "invalid_api_key"
    assert not ImageJob.objects.exists()


def test_openai_refuses_a_revoked_key(alice_key):
    api_key, key = alice_key
    api_key_revoke(api_key=api_key)

    _openai_error(_openai(key).get("/v1/models"), 401)


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": "a fox", "n": 0}, "n"),
        ({"prompt": "a fox", "n": 11}, "n"),
        ({"prompt": "a fox", "n": "2"}, "n"),
        ({"prompt": "a fox", "size": "big"}, "size"),
        ({"prompt": "a fox", "size": "4096x4096"}, "size"),
        ({"prompt": "a fox", "size": "100x100"}, "size"),
        ({"prompt": "a fox", "response_format": "png"}, "response_format"),
        ({"prompt": "a fox", "stream": "yes"}, "stream"),
        ({"prompt": "a fox", "stream": True, "partial_images": 4}, "partial_images"),
        ({"prompt": "a fox", "stream": True, "partial_images": -1}, "partial_images"),
        ({"prompt": "a fox", "stream": True, "partial_images": "2"}, "partial_images"),
        ({"prompt": "a fox", "stream": True, "partial_images": 1.5}, "partial_images"),
        ({"prompt": "a fox", "loras": "detail:0.5"}, "loras"),
        ({"prompt": "a fox", "loras": [{"name": "detail", "weight": "strong"}]}, "loras"),
        ({"prompt": "a fox", "loras": [{"name": "", "weight": 1}]}, "loras"),
        ({"prompt": "a fox", "loras": [{"name": "two words"}]}, "loras"),
        ({"prompt": "a fox", "loras": [{"name": "detail", "scale": 1}]}, "loras"),
        ({"prompt": "a fox", "loras": ["detail:lots"]}, "loras"),
        ({"prompt": "a fox", "loras": [3]}, "loras"),
    ],
)
def test_openai_bad_input_is_a_400_naming_the_field(body, param, alice_key):
    response = _post(_openai(alice_key[1]), "/v1/images/generations", body)

    assert _openai_error(response, 400, param)["type"] == "invalid_request_error"
    assert not ImageJob.objects.exists()


@pytest.mark.parametrize("body", ["not json", "[1, 2]", b"\xff\xfe"])
def test_openai_a_body_that_is_not_a_json_object_is_a_400(body, alice_key):
    _openai_error(_post(_openai(alice_key[1]), "/v1/images/generations", body), 400)


def test_openai_unknown_paths_and_methods(alice_key):
    client = _openai(alice_key[1])

    assert _openai_error(client.get("/v1/images/no-such-endpoint"), 404)["code"] == "unknown_url"
    assert _openai_error(client.get("/v1/images/edits"), 405)["code"] == "method_not_allowed"
    assert _openai_error(client.get("/v1/images/generations"), 405)["code"] == "method_not_allowed"


def test_openai_an_altered_or_foreign_image_link_is_a_404(alice_key):
    assert _openai(alice_key[1]).get("/v1/images/files/eyJqb2IiOjF9:abc:def").status_code == 404


def test_openai_lists_the_registry(alice_key):
    response = _openai(alice_key[1]).get("/v1/models")

    assert response.json() == {
        "object": "list",
        "data": [{"id": "demo", "object": "model", "created": 0, "owned_by": "imagegen"}],
    }


def test_openai_a_full_queue_is_a_429_with_retry_after(settings, alice, alice_key):
    settings.IMAGEGEN_MAX_PENDING_PER_USER = 2
    chat = Conversation.objects.create(owner=alice, title="chat")
    for _ in range(2):
        services.job_submit(user=alice, conversation=chat, prompt="waiting", width=64, height=64).jobs[0]

    response = _post(_openai(alice_key[1]), "/v1/images/generations", {"prompt": "one more", "size": "64x64"})

    error = _openai_error(response, 429)
    assert error["code"] == "rate_limit_exceeded"
    assert 1 <= int(response["Retry-After"]) <= 120
    assert ImageJob.objects.count() == 2


def test_openai_too_many_prompts_a_minute_is_a_429(settings, alice, alice_key):
    settings.IMAGEGEN_SUBMISSIONS_PER_MINUTE = 1
    chat = Conversation.objects.create(owner=alice, title="chat")
    services.job_submit(user=alice, conversation=chat, prompt="waiting", width=64, height=64).jobs[0]

    response = _post(_openai(alice_key[1]), "/v1/images/generations", {"prompt": "one more"})

    _openai_error(response, 429)
    assert 1 <= int(response["Retry-After"]) <= 60


def _disk_nearly_full(monkeypatch, settings):
    """The images' disk has 10 MB free, under the 100 MB the settings ask for."""
    import shutil
    from collections import namedtuple

    settings.IMAGEGEN_MIN_FREE_DISK_MB = 100
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 2**40 - 10 * 2**20, 10 * 2**20))


def test_a_full_disk_refuses_new_prompts_everywhere_and_creates_nothing(monkeypatch, settings, alice, alice_key):
    chat = Conversation.objects.create(owner=alice, title="chat")
    _disk_nearly_full(monkeypatch, settings)

    with pytest.raises(services.JobRefused, match="disk is full") as refused:
        services.job_submit(user=alice, conversation=chat, prompt="nowhere to put it", width=64, height=64)
    assert refused.value.refusal.unavailable

    response = _post(_openai(alice_key[1]), "/v1/images/generations", {"prompt": "nowhere", "size": "64x64"})
    error = _openai_error(response, 503)
    assert error["code"] == "service_unavailable" and "disk is full" in error["message"]
    assert response["Retry-After"] == "60"

    response = _post(_a1111("alice", alice_key[1]), "/sdapi/v1/txt2img", {"prompt": "nowhere"})
    assert response.status_code == 503 and response["Retry-After"] == "60"
    assert "disk is full" in json.dumps(response.json())

    client = Client()
    client.force_login(alice)
    page = client.post(f"/conversations/{chat.pk}/submit/", {"prompt": "nowhere", "width": 64, "height": 64})
    assert page.status_code == 503 and "disk is full" in page.content.decode()
    assert not ImageJob.objects.exists() and chat.messages.count() == 0


# --- AUTOMATIC1111 --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/sdapi/v1/options", "/sdapi/v1/sd-models", "/sdapi/v1/progress", "/sdapi/v1/cmd-flags", "/sdapi/v1/memory"],
)
def test_a1111_refuses_missing_empty_or_wrong_credentials(path, alice, alice_key, bob_key):
    _, key = alice_key
    clients = [
        Client(),
        Client(headers={"Authorization": "Basic "}),
        _a1111("alice", ""),
        _a1111("alice", "ig_wrong"),
        _a1111("bob", key),  # alice's key with another user's name
        _a1111("alice", bob_key[1]),
        Client(headers={"Authorization": f"Bearer {key}"}),
    ]
    for client in clients:
        response = client.get(path)
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "Basic"
        assert response.json() == {
            "error": "HTTPException",
            "detail": "Incorrect username or password",
            "body": "",
            "errors": "",
        }
    assert _a1111("alice", key).get(path).status_code == 200


@pytest.mark.parametrize(
    "body, field",
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "a fox", "steps": 0}, "steps"),
        ({"prompt": "a fox", "steps": 2.5}, "steps"),
        ({"prompt": "a fox", "cfg_scale": 31}, "cfg_scale"),
        ({"prompt": "a fox", "width": 513}, "width"),
        ({"prompt": "a fox", "seed": -2}, "seed"),
        ({"prompt": "a fox", "sampler_name": "DPM fast"}, "sampler_name"),
        ({"prompt": "a fox", "scheduler": "Beta"}, "scheduler"),
        ({"prompt": "a fox", "sampler_name": "DDIM Karras"}, "scheduler"),  # DDIM takes no Karras
        ({"prompt": "a fox", "batch_size": 4, "n_iter": 3}, "batch_size"),
        ({"prompt": "a fox", "batch_size": 0}, "batch_size"),
        ({"prompt": "a fox", "override_settings": {"sd_model_checkpoint": "sdxl"}}, "override_settings"),
        ({"prompt": "a fox", "override_settings": {"CLIP_stop_at_last_layers": 13}}, "override_settings"),
        ({"prompt": "a fox", "override_settings": {"eta_noise_seed_delta": -1}}, "override_settings"),
        ({"prompt": "a fox", "override_settings": {"samples_format": "gif"}}, "override_settings"),
    ],
)
def test_a1111_bad_input_is_a_400_naming_the_field(body, field, alice_key):
    response = _post(_a1111("alice", alice_key[1]), "/sdapi/v1/txt2img", body)

    assert response.status_code == 400, response.content
    assert field in [error["loc"][-1] for error in response.json()["detail"]]
    assert not ImageJob.objects.exists()


def test_a1111_a_full_queue_is_a_429(settings, alice, alice_key):
    settings.IMAGEGEN_MAX_PENDING_PER_USER = 1
    chat = Conversation.objects.create(owner=alice, title="chat")
    services.job_submit(user=alice, conversation=chat, prompt="waiting", width=64, height=64).jobs[0]

    response = _post(_a1111("alice", alice_key[1]), "/sdapi/v1/txt2img", {"prompt": "more"})

    assert response.status_code == 429 and 1 <= int(response["Retry-After"]) <= 120
    assert response.json()["detail"]


def test_a1111_accepts_the_fields_it_does_not_use():
    asked = a1111.parse_txt2img(
        {
            "prompt": "a fox",
            "enable_hr": True,
            "hr_scale": 2,
            "styles": ["x"],
            "subseed": 5,
            "restore_faces": True,
            "alwayson_scripts": {"x": {}},
            "sampler_name": "DPM++ 2M Karras",
            "scheduler": "karras",
            "seed": -1,
        }
    )

    assert asked["params"]["scheduler"] == "dpmpp_2m" and "seed" not in asked["params"]
    assert asked["count"] == 1 and asked["model"] is None


@pytest.mark.parametrize(
    "sampler_name, scheduler, expected",
    [
        (None, None, ("euler", "automatic")),
        ("Euler a", "automatic", ("euler_a", "automatic")),
        ("euler A", None, ("euler_a", "automatic")),
        ("k_dpmpp_2m", "Karras", ("dpmpp_2m", "karras")),
        ("dpmpp_2m", "KARRAS", ("dpmpp_2m", "karras")),
        ("DPM++ 2M Karras", None, ("dpmpp_2m", "karras")),
        ("DPM++ 2M Karras", "exponential", ("dpmpp_2m", "karras")),  # the name's schedule wins, as in A1111
        ("dpm++ 2m sde exponential", None, ("dpmpp_2m_sde", "exponential")),
        ("k_dpmpp_2m_sde_ka", None, ("dpmpp_2m_sde", "karras")),
        ("Euler SGM Uniform", None, ("euler", "sgm_uniform")),
        ("PLMS", "sgm_uniform", ("pndm", "sgm_uniform")),
        ("plms", "SGMUniform", ("pndm", "sgm_uniform")),
        ("UniPC", "Exponential", ("unipc", "exponential")),
        ("LCM", None, ("lcm", "automatic")),
    ],
)
def test_a1111_sampler_names_aliases_and_schedules(sampler_name, scheduler, expected):
    params = a1111.parse_txt2img({"prompt": "a fox", "sampler_name": sampler_name, "scheduler": scheduler})["params"]

    assert (params["scheduler"], params["schedule"]) == expected


def test_a1111_an_unknown_sampler_or_schedule_is_a_400_naming_the_known_ones(alice_key):
    client = _a1111("alice", alice_key[1])

    sampler = _post(client, "/sdapi/v1/txt2img", {"prompt": "a fox", "sampler_name": "Restart"}).json()["detail"][0]
    schedule = _post(client, "/sdapi/v1/txt2img", {"prompt": "a fox", "scheduler": "Align Your Steps"}).json()
    wrong = _post(client, "/sdapi/v1/txt2img", {"prompt": "a fox", "sampler_name": "DDIM", "scheduler": "Karras"})

    assert sampler["loc"] == ["body", "sampler_name"]
    assert sampler["msg"].startswith("sampler_name: one of Euler, Euler a, Heun, LMS, DPM2, DPM2 a, DPM++ 2M,")
    assert schedule["detail"][0]["msg"] == "scheduler: one of Automatic, Karras, Exponential, SGM Uniform."
    assert wrong.json()["detail"] == [
        {
            "loc": ["body", "scheduler"],
            "msg": "Schedule: DDIM runs with Automatic or SGM Uniform, not Karras.",
            "type": "value_error",
        }
    ]
    assert not ImageJob.objects.exists()


def test_a1111_lists_and_options(alice, alice_key, bob, bob_key):
    client = _a1111("alice", alice_key[1])

    models = client.get("/sdapi/v1/sd-models").json()
    assert [m["title"] for m in models] == ["demo"] and len(models[0]["sha256"]) == 64
    assert models[0]["hash"] == models[0]["sha256"][:10]
    samplers = client.get("/sdapi/v1/samplers").json()
    assert [s["name"] for s in samplers] == A1111_SAMPLERS
    assert samplers[1] == {"name": "Euler a", "aliases": ["k_euler_a", "k_euler_ancestral", "euler_a"], "options": {}}
    assert samplers[6] == {
        "name": "DPM++ 2M",
        "aliases": ["k_dpmpp_2m", "dpmpp_2m"],
        "options": {"scheduler": "karras"},
    }
    schedulers = client.get("/sdapi/v1/schedulers").json()
    assert [(row["name"], row["label"]) for row in schedulers] == [
        ("automatic", "Automatic"),
        ("karras", "Karras"),
        ("exponential", "Exponential"),
        ("sgm_uniform", "SGM Uniform"),
    ]
    assert schedulers[1] == {
        "name": "karras",
        "label": "Karras",
        "aliases": None,
        "default_rho": 7.0,
        "need_inner_model": False,
    }
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "demo"
    assert (
        _post(client, "/sdapi/v1/options", {"sd_model_checkpoint": f"demo [{models[0]['hash']}]", "x": 1}).status_code
        == 200
    )
    assert _post(client, "/sdapi/v1/options", {"sd_model_checkpoint": "sdxl"}).status_code == 400
    assert [row["name"] for row in client.get("/sdapi/v1/upscalers").json()] == ["None", "Lanczos", "Nearest"]
    assert client.get("/sdapi/v1/no-such-endpoint").status_code == 404
    assert client.get("/sdapi/v1/txt2img").status_code == 405


def test_progress_and_interrupt_are_each_users_own(alice, alice_key, bob, bob_key):
    alice_chat = Conversation.objects.create(owner=alice, title="a")
    bob_chat = Conversation.objects.create(owner=bob, title="b")
    running = services.job_submit(
        user=alice, conversation=alice_chat, prompt="mine", width=64, height=64, steps=10
    ).jobs[0]
    waiting = services.job_submit(user=bob, conversation=bob_chat, prompt="his", width=64, height=64).jobs[0]
    services.job_claim(worker="test:1")
    services.job_progress(job=running, step=3, total=10, persist=True)
    services.job_preview(job=running, step=4, image_data_url="data:image/jpeg;base64,AAAA")
    alice_client, bob_client = _a1111("alice", alice_key[1]), _a1111("bob", bob_key[1])

    mine = alice_client.get("/sdapi/v1/progress").json()
    assert (mine["progress"], mine["current_image"]) == (0.4, "AAAA")
    assert mine["state"]["sampling_step"] == 4 and mine["state"]["sampling_steps"] == 10
    assert mine["state"]["job_count"] == 1 and mine["eta_relative"] >= 0
    assert alice_client.get("/sdapi/v1/progress?skip_current_image=true").json()["current_image"] is None
    his = bob_client.get("/sdapi/v1/progress").json()
    assert his["progress"] == 0 and his["current_image"] is None
    assert his["state"]["job_count"] == 1 and his["state"]["sampling_step"] == 0

    assert _post(bob_client, "/sdapi/v1/interrupt", {}).json() == {}
    assert not ImageJob.objects.get(pk=running.pk).interrupt_requested
    assert ImageJob.objects.get(pk=waiting.pk).status == "queued"  # interrupt stops what runs only
    _post(alice_client, "/sdapi/v1/interrupt", {})
    # It stops at its next step, with the image of that step (the worker's part).
    running.refresh_from_db()
    assert running.status == "processing" and running.interrupt_requested
    assert alice_client.get("/sdapi/v1/progress").json()["state"]["interrupted"] is True
    assert bob_client.get("/sdapi/v1/progress").json()["state"]["interrupted"] is False


# --- Submitting -------------------------------------------------------------------


def test_a_request_key_attaches_a_retry_to_its_pending_job(alice, alice_key):
    api_key, _ = alice_key
    key = request_key(endpoint="openai.images", body=b'{"prompt": "a fox"}')

    first = api_jobs_submit(api_key=api_key, prompt="a fox", count=2, key=key, width=64, height=64)
    retried = api_jobs_submit(api_key=api_key, prompt="a fox", count=2, key=key, attach=True, width=64, height=64)
    fresh = api_jobs_submit(api_key=api_key, prompt="a fox", count=2, key=key, attach=False, width=64, height=64)

    assert [job.pk for job in retried] == [job.pk for job in first]
    assert len(fresh) == 2 and {job.pk for job in fresh}.isdisjoint(job.pk for job in first)
    assert ImageJob.objects.count() == 4
    # All in the key's conversation, named after it.
    assert set(ImageJob.objects.values_list("conversation__title", flat=True)) == {"API"}
    assert Conversation.objects.filter(owner=alice).count() == 1


def test_a_finished_or_failed_job_is_not_attached_to_after_a_while(alice, alice_key):
    api_key, _ = alice_key
    key = request_key(endpoint="openai.images", idempotency_key="k1")
    (job,) = api_jobs_submit(api_key=api_key, prompt="a fox", count=1, key=key, width=64, height=64)
    services.job_fail(job_id=job.pk, error="broken")

    (again,) = api_jobs_submit(api_key=api_key, prompt="a fox", count=1, key=key, width=64, height=64)

    assert again.pk != job.pk


def test_a_deleted_api_conversation_is_made_again(alice, alice_key):
    api_key, _ = alice_key
    (job,) = api_jobs_submit(api_key=api_key, prompt="a fox", count=1, width=64, height=64)
    services.conversation_delete(conversation=job.conversation)

    (again,) = api_jobs_submit(api_key=api_key, prompt="a fox", count=1, width=64, height=64)

    assert again.conversation.title == "API"


def test_a_preview_is_kept_per_job_and_pruned_when_it_ends(alice, alice_key, settings, tmp_path):
    api_key, _ = alice_key
    (job,) = api_jobs_submit(api_key=api_key, prompt="a fox", count=1, width=64, height=64)
    services.job_preview(job=job, step=1, image_data_url="data:image/jpeg;base64,AA")
    services.job_preview(job=job, step=2, image_data_url="data:image/jpeg;base64,BB")
    assert list(JobPreview.objects.values_list("job_id", "step", "image")) == [(job.pk, 2, "data:image/jpeg;base64,BB")]

    run_pass(JobRunner(FakeGenerator()))
    pruned = retention.records_prune()

    assert pruned["previews"] == 1 and not JobPreview.objects.exists()


def test_interrupt_stops_the_running_request_with_its_batch_but_not_other_prompts(alice, alice_key):
    api_key, key = alice_key
    batch = api_jobs_submit(api_key=api_key, prompt="four owls", count=3, width=64, height=64)
    (other,) = api_jobs_submit(api_key=api_key, prompt="one fox", count=1, width=64, height=64)
    services.job_claim(worker="test:1")

    _post(_a1111("alice", key), "/sdapi/v1/interrupt", {})

    jobs = {job.pk: job for job in ImageJob.objects.all()}
    # The running image stops early and keeps its image; its waiting ones are not made.
    assert (jobs[batch[0].pk].status, jobs[batch[0].pk].interrupt_requested) == ("processing", True)
    assert [jobs[job.pk].status for job in batch[1:]] == ["cancelled"] * 2
    assert (jobs[other.pk].status, jobs[other.pk].interrupt_requested) == ("queued", False)


def test_skip_stops_the_running_image_and_lets_the_rest_of_its_request_run(alice, alice_key):
    api_key, key = alice_key
    batch = api_jobs_submit(api_key=api_key, prompt="three owls", count=3, width=64, height=64)
    services.job_claim(worker="test:1")

    assert _post(_a1111("alice", key), "/sdapi/v1/skip", {}).json() == {}

    jobs = {job.pk: job for job in ImageJob.objects.all()}
    assert jobs[batch[0].pk].interrupt_requested
    assert [jobs[job.pk].status for job in batch[1:]] == ["queued"] * 2


def test_a1111_options_keep_every_key_and_check_those_imagegen_honours(alice, alice_key, bob, bob_key):
    alice_client, bob_client = _a1111("alice", alice_key[1]), _a1111("bob", bob_key[1])
    defaults = alice_client.get("/sdapi/v1/options").json()
    assert defaults["sd_vae"] == "Automatic" and defaults["samples_format"] == "png"
    assert defaults["CLIP_stop_at_last_layers"] == 1 and defaults["eta_noise_seed_delta"] == 0
    assert len(defaults) > 80, "every option A1111 clients read, with its default"

    written = {
        "CLIP_stop_at_last_layers": 2,
        "eta_noise_seed_delta": 31337,
        "samples_format": "JPG",
        "sd_vae": "vae-ft-mse.safetensors",
        "an_extensions_option": {"enabled": True, "items": [1, 2]},
    }
    assert _post(alice_client, "/sdapi/v1/options", written).status_code == 200
    assert _post(alice_client, "/sdapi/v1/options", {"jpeg_quality": 90}).status_code == 200

    mine = alice_client.get("/sdapi/v1/options").json()
    assert {key: mine[key] for key in written} == written  # as written
    assert mine["jpeg_quality"] == 90 and mine["sd_model_checkpoint"] == "demo"
    assert bob_client.get("/sdapi/v1/options").json() == defaults

    # One bad option refuses the whole request: nothing of it is stored.
    for bad in (
        {"CLIP_stop_at_last_layers": 0, "new_key": 1},
        {"CLIP_stop_at_last_layers": True},
        {"eta_noise_seed_delta": "31337", "new_key": 1},
        {"samples_format": "gif", "new_key": 1},
        {"jpeg_quality": 101},
        {"sd_model_checkpoint": "sdxl", "new_key": 1},
    ):
        response = _post(alice_client, "/sdapi/v1/options", bad)
        assert response.status_code == 400, bad
        assert response.json()["detail"][0]["loc"] == ["body", next(iter(bad))]
    assert alice_client.get("/sdapi/v1/options").json() == mine


def test_a1111_probes_answer_in_a1111s_shapes(alice, alice_key):
    client = _a1111("alice", alice_key[1])

    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert flags["api"] is True and flags["lowvram"] is False and flags["api_auth"]
    assert alice_key[1] not in json.dumps(flags)
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    for path in (
        "prompt-styles",
        "face-restorers",
        "hypernetworks",
        "realesrgan-models",
        "sd-vae",
        "latent-upscale-modes",
        "extensions",
        "script-info",
    ):
        assert client.get(f"/sdapi/v1/{path}").json() == [], path
    for path in ("refresh-checkpoints", "refresh-vae", "refresh-loras"):
        assert _post(client, f"/sdapi/v1/{path}", {}).json() == {}, path
        assert client.get(f"/sdapi/v1/{path}").status_code == 405
    memory = client.get("/sdapi/v1/memory").json()
    assert set(memory) == {"ram", "cuda"} and memory["ram"]["total"] > 0


def test_a1111_png_info_reads_the_parameters_of_a_png_or_a_jpeg(alice, alice_key):
    from generation.families import SD15
    from generation.pipeline import infotext
    from generation.png import encode_png
    from generation.request import GenerationRequest
    from tests.helpers import striped_picture

    request = GenerationRequest(
        model="demo",
        prompt="a lighthouse, at dusk",
        negative_prompt="fog",
        width=64,
        height=96,
        steps=3,
        guidance=6.5,
        seed=7,
        clip_skip=2,
    )
    text = infotext(request, SD15)
    png = encode_png(striped_picture((64, 96)), parameters=text)
    (jpeg,) = a1111._encoded([png], "jpg", 80)
    client = _a1111("alice", alice_key[1])

    for data in (png, jpeg):
        answer = _post(client, "/sdapi/v1/png-info", {"image": base64.b64encode(data).decode()}).json()
        assert answer["info"] == text
        parameters = answer["parameters"]
        assert (parameters["Prompt"], parameters["Negative prompt"]) == ("a lighthouse, at dusk", "fog")
        assert (parameters["Steps"], parameters["Seed"], parameters["CFG scale"]) == ("3", "7", "6.5")
        assert (parameters["Size-1"], parameters["Size-2"], parameters["Clip skip"]) == ("64", "96", "2")
        assert isinstance(answer["items"], dict)
    bare = encode_png(striped_picture((8, 8)))
    answer = _post(client, "/sdapi/v1/png-info", {"image": base64.b64encode(bare).decode()}).json()
    assert answer["info"] == "" and answer["parameters"]["Clip skip"] == "1"
    assert _post(client, "/sdapi/v1/png-info", {"image": "bm90IGFuIGltYWdl"}).status_code == 400


@pytest.mark.anyio
async def test_a_waiting_request_ends_when_its_job_is_deleted(alice, alice_key, settings):
    from asgiref.sync import sync_to_async

    from generation.api.waiting import wait_for_jobs

    settings.IMAGEGEN_API_POLL_SECONDS = 0.05
    api_key, _ = alice_key
    (job,) = await sync_to_async(api_jobs_submit)(api_key=api_key, prompt="a fox", count=1, width=64, height=64)
    await sync_to_async(services.conversation_delete)(conversation=job.conversation)

    with anyio.fail_after(10):
        await wait_for_jobs([job.pk])
