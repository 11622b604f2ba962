"""The `openai` package against the real web server and gpu cluster: streamed images
with partial images, ten images at once, one model, the default answer format per model
name, and LoRAs (our extension)."""

import base64
import io
import json

import openai
import pytest
import requests
from PIL import Image

from generation.models import ImageJob
from tests.generation.api.test_openai_client import _client
from tests.helpers import LAYER_DATABASES, image_file, striped_picture, wait_for

pytestmark = [
    pytest.mark.configured_layer,
    pytest.mark.django_db(transaction=True, databases=LAYER_DATABASES),
    pytest.mark.timeout(300),
]


def _png(b64: str) -> Image.Image:
    data = base64.b64decode(b64)
    assert data.startswith(b"\x89PNG")
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _photo():
    return ("photo.png", image_file(striped_picture()), "image/png")


# --- Streaming -----------------------------------------------------------------------


def test_a_stream_sends_distinct_partial_images_then_the_image(api_stack, key_for):
    alice, key = key_for("alice")

    # "[slow]": 20 steps of 0.4 s, and the worker keeps a preview about once a second.
    stream = _client(api_stack, key).images.generate(
        model="demo", prompt="[slow] a stormy sea", size="64x64", stream=True, partial_images=2
    )
    headers = stream.response.headers
    events = list(stream)

    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["Cache-Control"] == "no-cache" and headers["X-Accel-Buffering"] == "no"
    assert [event.type for event in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    partials, completed = events[:2], events[2]
    assert [event.partial_image_index for event in partials] == [0, 1]
    assert partials[0].b64_json != partials[1].b64_json, "two different previews"
    for event in events:
        assert (event.size, event.output_format, event.background, event.quality) == ("64x64", "png", "opaque", "auto")
        assert event.created_at > 0
    assert max(_png(partials[0].b64_json).size) <= 128
    image = _png(completed.b64_json)
    assert image.size == (64, 64) and "Model: demo" in image.info["parameters"]
    assert completed.usage.total_tokens == 0
    job = ImageJob.objects.get(owner=alice)
    assert job.status == "complete" and job.prompt == "[slow] a stormy sea"


def test_a_stream_of_ten_images_ends_with_one_completed_event_each_in_queue_order(api_stack, key_for):
    alice, key = key_for("alice")

    events = list(_client(api_stack, key).images.generate(prompt="ten boats", size="64x64", n=10, stream=True))

    assert [event.type for event in events] == ["image_generation.completed"] * 10
    seeds = list(ImageJob.objects.filter(owner=alice).order_by("sequence").values_list("seed", flat=True))
    assert seeds == list(range(seeds[0], seeds[0] + 10))
    infotexts = [_png(event.b64_json).info["parameters"] for event in events]
    assert all(f"Seed: {seed}," in text for text, seed in zip(infotexts, seeds, strict=True))


def test_an_edit_streams_as_image_edit_events_from_its_form(api_stack, key_for):
    alice, key = key_for("alice")

    # The edit runs 0.3 of 20 steps: 6 slow steps, a preview after about a second.
    events = list(
        _client(api_stack, key).images.edit(
            image=_photo(),
            prompt="[slow] the same at night",
            stream=True,
            partial_images=1,
            extra_body={"strength": 0.3},
        )
    )

    assert [event.type for event in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert events[0].partial_image_index == 0 and _png(events[0].b64_json)
    assert _png(events[1].b64_json).size == (64, 64) and events[1].size == "64x64"
    job = ImageJob.objects.get(owner=alice)
    assert (job.kind, job.strength, job.status) == ("img2img", 0.3, "complete")


def test_a_failure_after_the_stream_started_is_an_error_event(api_stack, key_for):
    alice, key = key_for("alice")
    stream = _client(api_stack, key).images.generate(prompt="[fail] a broken vase", size="64x64", stream=True)

    with pytest.raises(openai.APIError) as failed:
        list(stream)

    job = ImageJob.objects.get(owner=alice)
    assert job.status == "error"
    assert failed.value.message == job.error and failed.value.body["code"] == "generation_failed"


def test_bad_stream_input_is_a_plain_400_and_queues_nothing(api_stack, key_for):
    alice, key = key_for("alice")
    client = _client(api_stack, key)

    with pytest.raises(openai.BadRequestError) as too_many:
        client.images.generate(prompt="a fox", stream=True, partial_images=4)
    with pytest.raises(openai.BadRequestError) as not_a_number:
        client.images.edit(image=_photo(), prompt="a fox", stream=True, extra_body={"partial_images": "some"})

    assert too_many.value.body["param"] == not_a_number.value.body["param"] == "partial_images"
    assert not ImageJob.objects.filter(owner=alice).exists()


def test_a_client_that_leaves_a_stream_leaves_its_job_running(api_stack, key_for):
    alice, key = key_for("alice")
    log = api_stack["data_dir"] / "web.log"
    logged = len(log.read_text()) if log.exists() else 0
    response = requests.post(
        f"{api_stack['url']}/v1/images/edits",
        headers={"Authorization": f"Bearer {key}"},
        data={"prompt": "[slow] a lighthouse", "stream": "true", "partial_images": "3", "strength": "0.3"},
        files={"image": _photo()},
        stream=True,
        timeout=60,
    )
    assert response.status_code == 200
    first = next(line for line in response.iter_lines() if line.startswith(b"data:"))
    assert json.loads(first[5:])["type"] == "image_edit.partial_image"

    response.close()  # gone before the image is made

    job = ImageJob.objects.get(owner=alice)
    wait_for(lambda: ImageJob.objects.get(pk=job.pk).status == "complete", timeout=60, message="the job completes")
    assert "Traceback" not in log.read_text()[logged:]


# --- n, models, formats, LoRAs -------------------------------------------------------


def test_models_retrieve_finds_a_registry_model_and_not_an_unknown_one(api_stack, key_for):
    _, key = key_for("alice")
    client = _client(api_stack, key)

    model = client.models.retrieve("tiny")
    with pytest.raises(openai.NotFoundError) as unknown:
        client.models.retrieve("sd-1.5-no.such")

    assert (model.id, model.object, model.owned_by) == ("tiny", "model", "imagegen")
    assert unknown.value.body["code"] == "model_not_found" and "sd-1.5-no.such" in unknown.value.body["message"]


def test_the_answer_format_defaults_to_a_link_for_dall_e_and_to_base64_for_gpt_image(api_stack, key_for):
    _, key = key_for("alice")
    client = _client(api_stack, key)

    dall_e = client.images.generate(model="dall-e-3", prompt="a lighthouse", size="64x64")
    gpt_image = client.images.generate(model="gpt-image-1", prompt="a lighthouse", size="64x64")

    assert dall_e.data[0].url and not dall_e.data[0].b64_json
    assert requests.get(dall_e.data[0].url, timeout=30).content.startswith(b"\x89PNG")
    assert gpt_image.data[0].b64_json and not gpt_image.data[0].url


def test_loras_of_the_wrong_shape_are_a_400_naming_loras(api_stack, key_for):
    alice, key = key_for("alice")
    client = _client(api_stack, key)

    with pytest.raises(openai.BadRequestError) as generation:
        client.images.generate(prompt="a fox", extra_body={"loras": [{"name": "detail", "weight": "heavy"}]})
    with pytest.raises(openai.BadRequestError) as edit:
        client.images.edit(image=_photo(), prompt="a fox", extra_body={"loras": "{not json"})

    assert generation.value.body["param"] == edit.value.body["param"] == "loras"
    assert not ImageJob.objects.filter(owner=alice).exists()
