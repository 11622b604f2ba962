"""LoRAs through the APIs, with the real clients: A1111's `<lora:name:weight>` prompt tags
and `GET /sdapi/v1/loras` (webuiapi), the `loras` field of the OpenAI API (openai)."""

import base64
import io

import numpy as np
import openai
import pytest
import webuiapi
from PIL import Image

from generation.models import ImageJob
from tests.helpers import LAYER_DATABASES

pytestmark = [
    pytest.mark.configured_layer,
    pytest.mark.django_db(transaction=True, databases=LAYER_DATABASES),
    pytest.mark.timeout(300),
]

TINY = {"width": 64, "height": 64, "steps": 2, "seed": 11, "sampler_name": "Euler"}


def _a1111(api_stack, user, key) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(baseurl=f"{api_stack['url']}/sdapi/v1", username=user.username, password=key)


def test_webuiapi_lists_the_loras_and_applies_prompt_tags_as_a1111_does(api_stack, key_for):
    alice, key = key_for("alice")
    api = _a1111(api_stack, alice, key)

    listed = {row["name"]: row for row in api.get_loras()}
    assert set(listed) == {"grain", "ink", "style", "xl-style"}
    assert listed["xl-style"]["metadata"]["family"] == "sdxl"

    plain = api.txt2img(prompt="a castle", **TINY)
    styled = api.txt2img(prompt="a castle, <lora:style:0.9>", **TINY)
    zero = api.txt2img(prompt="<lora:style:0> a castle", **TINY)

    assert np.abs(np.asarray(styled.image, int) - np.asarray(plain.image, int)).mean() > 1
    assert np.array_equal(np.asarray(zero.image), np.asarray(plain.image))
    job = ImageJob.objects.get(pk=styled.info["job_ids"][0])
    assert (job.prompt, job.loras) == ("a castle", "style:0.9")
    infotext = styled.info["infotexts"][0]
    assert infotext.startswith("a castle <lora:style:0.9>\n")
    assert 'Lora hashes: "style: ' in infotext


def test_a1111_refuses_a_lora_of_another_family_and_queues_nothing(api_stack, key_for):
    alice, key = key_for("alice")
    api = _a1111(api_stack, alice, key)
    before = ImageJob.objects.count()

    with pytest.raises(RuntimeError) as refused:
        api.txt2img(prompt="a castle <lora:xl-style:1>", **TINY)

    assert "LoRA xl-style is made for Stable Diffusion XL models" in str(refused.value)
    assert ImageJob.objects.count() == before


def test_the_openai_api_takes_loras_as_a_field(api_stack, key_for):
    alice, key = key_for("alice")
    client = openai.OpenAI(base_url=f"{api_stack['url']}/v1", api_key=key, max_retries=0)

    result = client.images.generate(
        prompt="a castle",
        size="64x64",
        response_format="b64_json",
        extra_body={"loras": [{"name": "grain", "weight": 1.5}, "ink:-0.5"]},
    )

    job = ImageJob.objects.filter(owner=alice).get()
    assert job.loras == "grain:1.5 ink:-0.5"
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert "<lora:grain:1.5> <lora:ink:-0.5>" in image.info["parameters"]

    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt="a castle", size="64x64", extra_body={"loras": [{"name": "nope"}]})
    assert refused.value.body["param"] == "loras"
    assert "LoRA 'nope' is not installed" in refused.value.body["message"]
    assert ImageJob.objects.filter(owner=alice).count() == 1
