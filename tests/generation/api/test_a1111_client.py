"""The `webuiapi` package against the real web server and gpu cluster."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image

from generation import services
from generation.models import ImageJob
from tests.helpers import LAYER_DATABASES, striped_picture, wait_for

pytestmark = [
    pytest.mark.configured_layer,
    pytest.mark.django_db(transaction=True, databases=LAYER_DATABASES),
    pytest.mark.timeout(300),
]

TINY = {"width": 64, "height": 64, "steps": 2}


def _api(api_stack, user, key) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(baseurl=f"{api_stack['url']}/sdapi/v1", username=user.username, password=key)


def test_txt2img_with_webuiapis_defaults_makes_images_with_their_parameters(api_stack, key_for):
    alice, key = key_for("alice", name="webuiapi")
    api = _api(api_stack, alice, key)

    result = api.txt2img(prompt="a cat on a wall", negative_prompt="blurry", seed=1234, cfg_scale=6.5, **TINY)

    assert len(result.images) == 1 and result.image.size == (64, 64)
    assert result.info["seed"] == 1234 and result.info["all_seeds"] == [1234]
    assert result.info["sampler_name"] == "Euler a"  # webuiapi's default sampler
    assert (result.info["width"], result.info["height"], result.info["steps"]) == (64, 64, 2)
    assert result.info["cfg_scale"] == 6.5 and result.info["sd_model_name"] == "demo"
    assert result.info["prompt"] == "a cat on a wall"
    infotext = result.image.info["parameters"]
    assert infotext == result.info["infotexts"][0]
    assert "Negative prompt: blurry" in infotext and "Sampler: Euler a, CFG scale: 6.5, Seed: 1234" in infotext
    assert result.parameters["prompt"] == "a cat on a wall"
    job = ImageJob.objects.get(owner=alice)
    assert (job.scheduler, job.conversation.title) == ("euler_a", "webuiapi")


def test_batch_size_times_n_iter_images_with_consecutive_seeds(api_stack, key_for):
    alice, key = key_for("alice")

    result = _api(api_stack, alice, key).txt2img(prompt="boats", seed=7, batch_size=2, n_iter=2, **TINY)

    assert len(result.images) == 4
    assert result.info["all_seeds"] == [7, 8, 9, 10]
    assert ImageJob.objects.filter(owner=alice).count() == 4


def test_a_model_chosen_in_options_is_that_users_default_only(api_stack, key_for):
    alice, alice_key = key_for("alice")
    bob, bob_key = key_for("bob")
    alice_api, bob_api = _api(api_stack, alice, alice_key), _api(api_stack, bob, bob_key)
    assert sorted(alice_api.util_get_model_names()) == ["demo", "tiny"]

    alice_api.util_set_model("Tiny")

    assert alice_api.util_get_current_model() == "tiny"
    assert bob_api.util_get_current_model() == "demo"
    assert alice_api.txt2img(prompt="a tiny house", **TINY).info["sd_model_name"] == "tiny"
    assert bob_api.txt2img(prompt="a big house", **TINY).info["sd_model_name"] == "demo"
    overridden = bob_api.txt2img(prompt="a house", override_settings={"sd_model_checkpoint": "tiny"}, **TINY)
    assert overridden.info["sd_model_name"] == "tiny"
    assert bob_api.util_get_current_model() == "demo"  # an override is for that request only


def test_lists_samplers_schedulers_and_scripts(api_stack, key_for):
    alice, key = key_for("alice")
    api = _api(api_stack, alice, key)

    assert "Euler a" in api.util_get_sampler_names()
    assert api.util_get_scheduler_names() == ["automatic", "exponential", "karras", "sgm_uniform"]
    assert api.get_scripts() == {"txt2img": [], "img2img": []}
    model = api.get_sd_models()[0]
    assert set(model) >= {"title", "model_name", "hash", "sha256", "filename", "config"}


def test_every_listed_sampler_makes_an_image_whose_infotext_names_it(api_stack, key_for):
    alice, key = key_for("alice")
    api = _api(api_stack, alice, key)
    samplers = api.get_samplers()
    assert [row["name"] for row in api.get_schedulers()] == ["automatic", "karras", "exponential", "sgm_uniform"]
    assert len(samplers) == 14 and all(set(row) == {"name", "aliases", "options"} for row in samplers)

    # A few at a time: two samplers never share a pass, but the requests' waits overlap.
    with ThreadPoolExecutor(4) as pool:
        results = pool.map(lambda row: api.txt2img(prompt="a kite", sampler_name=row["name"], seed=3, **TINY), samplers)
        for row, result in zip(samplers, results, strict=True):
            assert result.image.size == (64, 64) and np.asarray(result.image).std() > 0
            assert result.info["sampler_name"] == row["name"] and result.info["scheduler"] == "Automatic"
            assert f"Sampler: {row['name']}," in result.image.info["parameters"]

    karras = api.txt2img(prompt="a kite", sampler_name="DPM++ 2M Karras", seed=3, **TINY)
    assert "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale" in karras.image.info["parameters"]
    assert karras.info["scheduler"] == "Karras"
    assert ImageJob.objects.filter(owner=alice, scheduler="dpmpp_2m", schedule="karras").count() == 1
    with pytest.raises(RuntimeError) as refused:
        api.txt2img(prompt="a kite", sampler_name="DPM adaptive", **TINY)
    status, body = refused.value.args
    assert status == 400
    assert json.loads(body)["detail"][0]["msg"].startswith("sampler_name: one of Euler, Euler a, Heun, LMS,")


def _wait_running(api, *, step: int = 1, image: bool = False) -> dict:
    def running():
        progress = api.get_progress()
        state = progress["state"]
        if state["sampling_step"] >= step and (progress["current_image"] or not image):
            return progress
        return None

    return wait_for(running, timeout=60, interval=0.2, message="the job to run")


def test_two_users_each_see_and_interrupt_only_their_own_job(api_stack, key_for):
    alice, alice_key = key_for("alice")
    bob, bob_key = key_for("bob")
    alice_api, bob_api = _api(api_stack, alice, alice_key), _api(api_stack, bob, bob_key)
    assert bob_api.get_progress()["progress"] == 0 and bob_api.get_progress()["state"]["job_count"] == 0

    with ThreadPoolExecutor(2) as pool:
        alice_call = pool.submit(alice_api.txt2img, prompt="[slow] alice's owl", width=64, height=64, steps=10)
        alice_progress = _wait_running(alice_api, step=2, image=True)
        bob_call = pool.submit(bob_api.txt2img, prompt="[slow] bob's owl", width=64, height=64, steps=4)
        wait_for(lambda: ImageJob.objects.filter(owner=bob).exists(), timeout=30, message="bob's job")

        # Alice sees her running job with its preview; bob sees his queued job, nothing running.
        assert 0 < alice_progress["progress"] < 1 and alice_progress["eta_relative"] >= 0
        assert alice_progress["state"]["sampling_steps"] == 10 and alice_progress["state"]["job_count"] == 1
        assert alice_progress["current_image"]
        bob_progress = bob_api.get_progress()
        assert bob_progress["progress"] == 0 and bob_progress["current_image"] is None
        assert bob_progress["state"]["job_count"] == 1 and bob_progress["state"]["sampling_step"] == 0

        bob_api.interrupt()  # bob has nothing running: alice's job goes on
        time.sleep(1)
        assert ImageJob.objects.get(owner=alice).status == "processing"
        assert alice_api.get_progress()["state"]["sampling_step"] >= alice_progress["state"]["sampling_step"]

        alice_api.interrupt()
        alice_result = alice_call.result(timeout=60)
        bob_progress = _wait_running(bob_api, step=1)
        assert bob_progress["state"]["sampling_steps"] == 4
        assert alice_api.get_progress()["progress"] == 0
        bob_result = bob_call.result(timeout=60)

    # Interrupted: the image of the step it reached, full size, and its info says so.
    alice_job = ImageJob.objects.get(owner=alice)
    assert alice_job.status == "complete" and 2 <= alice_job.stopped_at_step < 10
    assert len(alice_result.images) == 1 and alice_result.image.size == (64, 64)
    stopped = f"step {alice_job.stopped_at_step} of 10"
    assert alice_result.info["extra_generation_params"] == {"Interrupted": stopped}
    assert f"Interrupted: {stopped}" in alice_result.image.info["parameters"]
    assert alice_result.info["infotexts"] == [alice_result.image.info["parameters"]]
    assert alice_job.message.content == f"Stopped at {stopped}: your image as it was then."
    assert len(bob_result.images) == 1
    assert ImageJob.objects.get(owner=bob).status == "complete"
    assert json.loads(json.dumps(bob_result.info))["all_seeds"]


def test_a_chat_cancel_of_a_running_request_still_discards_its_image(api_stack, key_for):
    alice, key = key_for("alice")
    api = _api(api_stack, alice, key)

    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(api.txt2img, prompt="[slow] a discarded owl", width=64, height=64, steps=10)
        _wait_running(api, step=1)
        services.job_cancel(job=ImageJob.objects.get(owner=alice))  # the chat's Cancel button
        result = call.result(timeout=60)

    assert result.images == []
    job = ImageJob.objects.get(owner=alice)
    assert (job.status, bool(job.image), job.stopped_at_step) == ("cancelled", False, None)


def test_options_round_trip_and_clip_skip_ensd_and_the_image_format_are_honoured(api_stack, key_for):
    alice, key = key_for("alice")
    api = _api(api_stack, alice, key)
    written = {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337, "samples_format": "jpg"}

    api.set_options({**written, "an_unknown_option": [1, "two"]})

    options = api.get_options()
    assert {key: options[key] for key in written} == written and options["an_unknown_option"] == [1, "two"]
    assert options["sd_vae"] == "Automatic" and options["sd_model_checkpoint"] == "demo"
    skipped = api.txt2img(prompt="a lamp", seed=5, **TINY)  # webuiapi's Euler a: ENSD moves its noise
    assert skipped.image.format == "JPEG" and skipped.image.size == (64, 64)
    infotext = skipped.info["infotexts"][0]
    assert "Clip skip: 2, ENSD: 31337" in infotext and skipped.info["clip_skip"] == 2
    # This request alone: clip skip 1 and a PNG; ENSD stays the user's.
    plain = api.txt2img(
        prompt="a lamp", seed=5, override_settings={"CLIP_stop_at_last_layers": 1, "samples_format": "png"}, **TINY
    )
    assert plain.image.format == "PNG" and "Clip skip" not in plain.image.info["parameters"]
    assert "ENSD: 31337" in plain.image.info["parameters"]
    skipped_png = api.txt2img(prompt="a lamp", seed=5, override_settings={"samples_format": "PNG"}, **TINY)
    assert skipped_png.image.format == "PNG" and skipped_png.info["clip_skip"] == 2
    assert not np.array_equal(np.asarray(plain.image), np.asarray(skipped_png.image)), "another encoding"
    jobs = ImageJob.objects.filter(owner=alice).order_by("sequence")
    assert [(job.clip_skip, job.noise_seed_delta) for job in jobs] == [(2, 31337), (1, 31337), (2, 31337)]
    assert api.get_options()["CLIP_stop_at_last_layers"] == 2  # an override is for that request only

    bad = requests.post(
        f"{api_stack['url']}/sdapi/v1/options",
        json={"CLIP_stop_at_last_layers": 13, "samples_format": "webp"},
        auth=(alice.username, key),
        timeout=30,
    )
    assert bad.status_code == 400 and bad.json()["detail"][0]["loc"] == ["body", "CLIP_stop_at_last_layers"]
    assert api.get_options()["samples_format"] == "jpg", "nothing of a refused request is stored"


def test_the_probes_tools_call_answer_in_a1111s_shapes(api_stack, key_for):
    alice, key = key_for("alice")
    api = _api(api_stack, alice, key)

    assert api.get_cmd_flags()["api"] is True
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    assert api.get_prompt_styles() == [] and api.get_face_restorers() == [] and api.get_hypernetworks() == []
    assert api.get_realesrgan_models() == [] and api.get_sd_vae() == [] and api.get_latent_upscale_modes() == []
    assert [row["name"] for row in api.get_upscalers()] == ["None", "Lanczos", "Nearest"]
    assert set(api.get_memory()) == {"ram", "cuda"}
    assert api.refresh_checkpoints() == {} and api.skip() == {}


def test_a_failed_job_is_a_500_with_its_message(api_stack, key_for):
    alice, key = key_for("alice")

    with pytest.raises(RuntimeError) as failed:
        _api(api_stack, alice, key).txt2img(prompt="[fail] a broken vase", **TINY)

    status, body = failed.value.args
    assert status == 500 and json.loads(body)["detail"] == ImageJob.objects.get(owner=alice).error


# --- Edits: img2img with a mask, and extras ------------------------------------------


def test_webuiapi_img2img_with_a_mask_inpaints_only_the_white_part(api_stack, key_for):
    alice, key = key_for("alice", name="webuiapi")
    api = _api(api_stack, alice, key)
    source = striped_picture((64, 96))
    mask = Image.new("L", (64, 96), 0)
    mask.paste(255, (0, 48, 64, 96))  # the bottom half

    result = api.img2img(
        images=[source],
        mask_image=mask,
        prompt="a lake",
        denoising_strength=0.8,
        mask_blur=2,
        seed=5,
        steps=4,
        width=64,
        height=96,
    )

    assert result.image.size == (64, 96)
    assert result.info["denoising_strength"] == 0.8 and result.info["mask_blur"] == 2
    assert "Denoising strength: 0.8" in result.image.info["parameters"]
    pixels = np.asarray(result.image.convert("RGB"), dtype=int)
    assert np.array_equal(pixels[:40], np.asarray(source, dtype=int)[:40])
    assert result.parameters["init_images"] is None, "the inputs are not sent back unless asked"
    job = ImageJob.objects.get(owner=alice)
    assert (job.kind, job.seed, job.work_steps) == ("inpaint", 5, 3)


def test_webuiapi_extras_upscale_and_the_upscalers_it_can_choose(api_stack, key_for):
    alice, key = key_for("alice")
    api = _api(api_stack, alice, key)

    names = [row["name"] for row in api.get_upscalers()]
    result = api.extra_single_image(image=striped_picture((40, 30)), upscaler_1="Lanczos", upscaling_resize=2)

    assert names == ["None", "Lanczos", "Nearest"]
    assert result.image.size == (80, 60)
    bad = requests.post(
        f"{api_stack['url']}/sdapi/v1/img2img",
        json={"prompt": "x", "init_images": ["bm90IGFuIGltYWdl"]},
        auth=(alice.username, key),
        timeout=30,
    )
    assert bad.status_code == 400
    assert bad.json()["detail"][0]["loc"] == ["body", "init_images"]
    assert "not an image" in bad.json()["detail"][0]["msg"]
    assert not ImageJob.objects.filter(owner=alice).exists()
