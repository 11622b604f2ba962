"""The `openai` package against the real web server and gpu cluster."""

import base64
import io

import numpy as np
import openai
import pytest
import requests
from PIL import Image

from chat.models import Conversation
from generation import services
from generation.models import ImageJob
from tests.helpers import LAYER_DATABASES, image_file, striped_picture

pytestmark = [
    pytest.mark.configured_layer,
    pytest.mark.django_db(transaction=True, databases=LAYER_DATABASES),
    pytest.mark.timeout(300),
]


def _client(api_stack, key, **options):
    return openai.OpenAI(base_url=f"{api_stack['url']}/v1", api_key=key, max_retries=0, timeout=120, **options)


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_it_makes_an_image_as_base64_in_the_users_api_conversation(api_stack, key_for):
    alice, key = key_for("alice")

    result = _client(api_stack, key).images.generate(
        model="demo", prompt="  a red fox  ", size="64x64", response_format="b64_json"
    )

    assert len(result.data) == 1 and result.created > 0
    assert result.data[0].revised_prompt == "a red fox"
    image = _png(base64.b64decode(result.data[0].b64_json))
    assert image.size == (64, 64) and "Model: demo" in image.info["parameters"]
    job = ImageJob.objects.get(owner=alice)
    assert job.status == "complete" and job.model == "demo"
    # It shows in the chat like any job, in the conversation named after the key.
    conversation = Conversation.objects.get(owner=alice)
    assert conversation.title == "API" and job.conversation_id == conversation.pk
    assert job.message.metadata["status"] == "complete"


def test_unknown_model_names_use_the_default_model(api_stack, key_for):
    alice, key = key_for("alice")

    result = _client(api_stack, key).images.generate(model="dall-e-3", prompt="a lighthouse", size="64x64")

    assert len(result.data) == 1
    assert ImageJob.objects.get(owner=alice).model == "demo"


def test_it_makes_n_images_as_expiring_links_that_only_work_unaltered(api_stack, key_for):
    alice, key = key_for("alice")

    result = _client(api_stack, key).images.generate(
        model="tiny", prompt="two boats", size="64x64", n=2, response_format="url"
    )

    assert len(result.data) == 2
    jobs = list(ImageJob.objects.filter(owner=alice).order_by("sequence"))
    assert [job.model for job in jobs] == ["tiny", "tiny"]
    assert jobs[1].seed == jobs[0].seed + 1 and jobs[0].message_id == jobs[1].message_id
    for item in result.data:
        response = requests.get(item.url, timeout=10)  # no key: the link itself is the permission
        assert response.status_code == 200 and response.headers["Content-Type"] == "image/png"
        assert _png(response.content).size == (64, 64)
    altered = result.data[0].url[:-3] + ("abc" if not result.data[0].url.endswith("abc") else "xyz")
    assert requests.get(altered, timeout=10).status_code == 404


def test_bad_input_is_a_bad_request_error_naming_the_field(api_stack, key_for):
    alice, key = key_for("alice")
    client = _client(api_stack, key)

    with pytest.raises(openai.BadRequestError) as size_error:
        client.images.generate(prompt="a fox", size="65x64")
    with pytest.raises(openai.BadRequestError) as n_error:
        client.images.generate(prompt="a fox", n=11)

    assert size_error.value.status_code == 400
    assert size_error.value.body["param"] == "size" and "Width" in size_error.value.body["message"]
    assert n_error.value.body["param"] == "n"
    assert not ImageJob.objects.filter(owner=alice).exists()


def test_a_full_queue_is_a_rate_limit_error_with_retry_after(api_stack, key_for, settings):
    alice, key = key_for("alice")
    conversation = Conversation.objects.create(owner=alice, title="chat")
    held = [
        services.job_submit(
            user=alice, conversation=conversation, prompt=f"[hang] {n}", width=64, height=64, steps=2
        ).jobs[0]
        for n in range(settings.IMAGEGEN_MAX_PENDING_PER_USER)
    ]
    try:
        with pytest.raises(openai.RateLimitError) as refused:
            _client(api_stack, key).images.generate(prompt="one more", size="64x64")
    finally:
        for job in held:
            services.job_cancel(job=job)

    assert refused.value.status_code == 429
    assert 1 <= int(refused.value.response.headers["Retry-After"]) <= 120
    assert "waiting" in refused.value.body["message"]
    assert ImageJob.objects.filter(owner=alice).count() == len(held)


def test_a_retried_request_attaches_to_its_pending_job(api_stack, key_for):
    alice, key = key_for("alice")
    impatient = _client(api_stack, key).with_options(timeout=1.5, max_retries=1)
    asked = {"prompt": "[slow] a patient heron", "size": "64x64", "model": "demo"}

    with pytest.raises(openai.APITimeoutError):
        impatient.images.generate(**asked)  # the first try and its retry both time out

    job = ImageJob.objects.get(owner=alice)  # the retry did not queue a second one
    assert job.status in ImageJob.PENDING
    # Another retry of that request waits for the same job and gets its image.
    result = _client(api_stack, key).images.generate(**asked, extra_headers={"X-Stainless-Retry-Count": "2"})
    assert len(result.data) == 1
    assert list(ImageJob.objects.filter(owner=alice).values_list("pk", "status")) == [(job.pk, "complete")]
    # A request that is not a retry is a new one, even with the same body.
    _client(api_stack, key).images.generate(**{**asked, "prompt": "a patient heron"})
    assert ImageJob.objects.filter(owner=alice).count() == 2


def test_the_same_idempotency_key_is_one_job(api_stack, key_for):
    alice, key = key_for("alice")
    client = _client(api_stack, key)
    headers = {"Idempotency-Key": "order-42"}
    asked = {"prompt": "a kite", "size": "64x64", "response_format": "b64_json", "extra_headers": headers}

    first = client.images.generate(**asked)
    again = client.images.generate(**asked)

    assert first.data[0].b64_json and first.data[0].b64_json == again.data[0].b64_json
    assert ImageJob.objects.filter(owner=alice).count() == 1


def test_models_lists_the_registry(api_stack, key_for):
    _, key = key_for("alice")

    models = _client(api_stack, key).models.list()

    assert [model.id for model in models.data] == ["demo", "tiny"]


def test_a_failed_job_is_a_server_error_with_its_message(api_stack, key_for):
    alice, key = key_for("alice")

    with pytest.raises(openai.InternalServerError) as failed:
        _client(api_stack, key).images.generate(prompt="[fail] a broken vase", size="64x64")

    job = ImageJob.objects.get(owner=alice)
    assert job.status == "error" and failed.value.body["message"] == job.error


# --- Edits and variations ------------------------------------------------------------


def _b64_png(b64: str) -> Image.Image:
    return _png(base64.b64decode(b64))


def test_openai_images_edit_with_and_without_a_mask(api_stack, key_for):
    alice, key = key_for("alice")
    client = _client(api_stack, key)
    source = striped_picture()
    # OpenAI's masks: transparent where the image is to change (here the right half).
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (32, 0, 64, 64))

    edited = client.images.edit(
        image=("photo.png", image_file(source), "image/png"),
        prompt="the same in winter",
        model="demo",
        response_format="b64_json",
    )
    inpainted = client.images.edit(
        image=("photo.png", image_file(source), "image/png"),
        mask=("mask.png", image_file(mask), "image/png"),
        prompt="a red door",
        n=2,
        response_format="b64_json",
    )

    picture = _b64_png(edited.data[0].b64_json)
    assert picture.size == (64, 64) and "Denoising strength: 0.6" in picture.info["parameters"]
    assert len(inpainted.data) == 2
    first = np.asarray(_b64_png(inpainted.data[0].b64_json).convert("RGB"), dtype=int)
    kept = np.asarray(source, dtype=int)
    assert np.array_equal(first[:, :20], kept[:, :20]), "the opaque part of the mask is kept"
    assert not np.array_equal(first[:, 40:], kept[:, 40:])
    jobs = list(ImageJob.objects.filter(owner=alice).order_by("sequence"))
    assert [job.kind for job in jobs] == ["img2img", "inpaint", "inpaint"]
    assert all(job.status == "complete" and job.source_image for job in jobs)


def test_openai_create_variation_answers_with_links(api_stack, key_for):
    alice, key = key_for("alice")

    result = _client(api_stack, key).images.create_variation(
        image=("photo.webp", image_file(striped_picture(), "WEBP"), "image/webp"),
        n=2,
        size="64x64",
        response_format="url",
    )

    assert len(result.data) == 2
    sizes = [Image.open(io.BytesIO(requests.get(item.url, timeout=30).content)).size for item in result.data]
    assert sizes == [(64, 64), (64, 64)]
    jobs = ImageJob.objects.filter(owner=alice)
    assert {(job.kind, job.strength, job.prompt) for job in jobs} == {("img2img", 0.7, "")}


def test_openai_edit_refuses_bad_images_in_its_own_error_shape(api_stack, key_for):
    alice, key = key_for("alice")
    client = _client(api_stack, key)
    image = ("x.png", image_file(striped_picture()), "image/png")
    opaque_mask = ("m.png", image_file(Image.new("RGB", (64, 64))), "image/png")
    small_mask = ("m.png", image_file(Image.new("RGBA", (32, 32))), "image/png")
    cases = [
        ({"image": ("x.png", b"not an image", "image/png")}, "image", "not an image"),
        ({"image": image, "mask": opaque_mask}, "mask", "transparency"),
        ({"image": image, "mask": small_mask}, "mask", "same size"),
    ]
    for files, param, text in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.images.edit(prompt="x", **files)
        error = caught.value.body
        assert error["param"] == param and text in error["message"], error
    assert not ImageJob.objects.filter(owner=alice).exists()
