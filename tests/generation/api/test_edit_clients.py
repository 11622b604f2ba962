"""Edits through the real clients: the `openai` package's images.edit and
create_variation, and webuiapi's img2img (with a mask) and extras, against the real
web server and gpu cluster."""

import base64
import io

import numpy as np
import openai
import pytest
import requests
import webuiapi
from PIL import Image

from generation.models import ImageJob
from tests.helpers import LAYER_DATABASES

pytestmark = [
    pytest.mark.configured_layer,
    pytest.mark.django_db(transaction=True, databases=LAYER_DATABASES),
    pytest.mark.timeout(300),
]


def _picture(size=(64, 64)) -> Image.Image:
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, :, 0] = (np.arange(width) * 4 % 256)[None, :]
    pixels[:, :, 2] = (np.arange(height) * 3 % 256)[:, None]
    return Image.fromarray(pixels, "RGB")


def _file(image: Image.Image, fmt="PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def _decoded(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def _client(api_stack, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api_stack['url']}/v1", api_key=key, max_retries=0, timeout=120)


def test_openai_images_edit_with_and_without_a_mask(api_stack, key_for):
    alice, key = key_for("alice")
    client = _client(api_stack, key)
    source = _picture()
    # OpenAI's masks: transparent where the image is to change (here the right half).
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (32, 0, 64, 64))

    edited = client.images.edit(
        image=("photo.png", _file(source), "image/png"), prompt="the same in winter", model="demo"
    )
    inpainted = client.images.edit(
        image=("photo.png", _file(source), "image/png"),
        mask=("mask.png", _file(mask), "image/png"),
        prompt="a red door",
        n=2,
        response_format="b64_json",
    )

    picture = _decoded(edited.data[0].b64_json)
    assert picture.size == (64, 64) and "Denoising strength: 0.6" in picture.info["parameters"]
    assert len(inpainted.data) == 2
    first = np.asarray(_decoded(inpainted.data[0].b64_json).convert("RGB"), dtype=int)
    kept = np.asarray(source, dtype=int)
    assert np.array_equal(first[:, :20], kept[:, :20]), "the opaque part of the mask is kept"
    assert not np.array_equal(first[:, 40:], kept[:, 40:])
    jobs = list(ImageJob.objects.filter(owner=alice).order_by("sequence"))
    assert [job.kind for job in jobs] == ["img2img", "inpaint", "inpaint"]
    assert all(job.status == "complete" and job.source_image for job in jobs)


def test_openai_create_variation_answers_with_links(api_stack, key_for):
    alice, key = key_for("alice")

    result = _client(api_stack, key).images.create_variation(
        image=("photo.webp", _file(_picture(), "WEBP"), "image/webp"), n=2, size="64x64", response_format="url"
    )

    assert len(result.data) == 2
    sizes = [Image.open(io.BytesIO(requests.get(item.url, timeout=30).content)).size for item in result.data]
    assert sizes == [(64, 64), (64, 64)]
    jobs = ImageJob.objects.filter(owner=alice)
    assert {(job.kind, job.strength, job.prompt) for job in jobs} == {("img2img", 0.7, "")}


def test_openai_edit_refuses_bad_images_in_its_own_error_shape(api_stack, key_for):
    alice, key = key_for("alice")
    client = _client(api_stack, key)
    image = ("x.png", _file(_picture()), "image/png")
    opaque_mask = ("m.png", _file(Image.new("RGB", (64, 64))), "image/png")
    small_mask = ("m.png", _file(Image.new("RGBA", (32, 32))), "image/png")
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


def _api(api_stack, user, key) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(baseurl=f"{api_stack['url']}/sdapi/v1", username=user.username, password=key)


def test_webuiapi_img2img_with_a_mask_inpaints_only_the_white_part(api_stack, key_for):
    alice, key = key_for("alice", name="webuiapi")
    api = _api(api_stack, alice, key)
    source = _picture((64, 96))
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
    result = api.extra_single_image(image=_picture((40, 30)), upscaler_1="Lanczos", upscaling_resize=2)

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
