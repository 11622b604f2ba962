"""How the OpenAI API reads a request's fields: the answer's format per model name, the
stream's fields, and LoRAs (our extension) from a JSON body or a multipart form."""

import pytest
from django.http import QueryDict

from generation.api.openai import ApiError, _multipart_loras, parse_generation


def _parsed(**body):
    return parse_generation({"prompt": "a fox", **body})


@pytest.mark.parametrize(
    "body, answer",
    [
        ({"model": "dall-e-2"}, "url"),
        ({"model": "dall-e-3"}, "url"),
        ({"model": "demo"}, "url"),
        ({}, "url"),  # OpenAI's default model is dall-e-2...
        ({"output_format": "png"}, "b64_json"),  # ...unless a GPT image model's own field is set
        ({"stream": True}, "b64_json"),
        ({"stream": "false"}, "url"),
        ({"model": "gpt-image-1"}, "b64_json"),
        ({"model": "gpt-image-1-mini"}, "b64_json"),
        ({"model": "gpt-image-1.5"}, "b64_json"),
        ({"model": "some-other-model"}, "b64_json"),
        ({"model": "demo", "response_format": "b64_json"}, "b64_json"),
        ({"model": "dall-e-3", "response_format": "b64_json"}, "b64_json"),
    ],
)
def test_the_answer_format_defaults_by_model_name_and_is_what_was_asked_when_asked(body, answer):
    assert _parsed(**body)["response_format"] == answer


@pytest.mark.parametrize(
    "body, stream, partial_images",
    [
        ({}, False, 0),
        ({"stream": True, "partial_images": 3}, True, 3),
        ({"stream": "true", "partial_images": 0}, True, 0),  # a multipart form's way
        ({"stream": None, "partial_images": None}, False, 0),
    ],
)
def test_stream_and_partial_images(body, stream, partial_images):
    parsed = _parsed(**body)
    assert (parsed["stream"], parsed["partial_images"]) == (stream, partial_images)


@pytest.mark.parametrize(
    "loras, stored",
    [
        ([{"name": "detail", "weight": 0.5}, {"name": "anime"}], "anime:1 detail:0.5"),
        (["detail:0.5", "anime", "soft:-1"], "anime:1 detail:0.5 soft:-1"),
        ([{"name": "detail", "weight": 0}], "detail:0"),
        ([], None),
        (None, None),
    ],
)
def test_loras_reach_the_job_as_name_weight_pairs(loras, stored):
    assert _parsed(loras=loras)["params"].get("loras") == stored


@pytest.mark.parametrize(
    "loras",
    ["detail", {"name": "detail"}, [{"name": "detail", "weight": float("nan")}], [{"name": "detail", "weight": True}]],
)
def test_loras_of_another_shape_are_refused_naming_loras(loras):
    with pytest.raises(ApiError) as refused:
        _parsed(loras=loras)
    assert refused.value.status == 400 and refused.value.body["error"]["param"] == "loras"


@pytest.mark.parametrize(
    "form, loras",
    [
        ("loras=%5B%7B%22name%22%3A%22detail%22%2C%22weight%22%3A0.5%7D%5D", [{"name": "detail", "weight": 0.5}]),
        ("loras%5B%5D=detail%3A0.5&loras%5B%5D=anime", ["detail:0.5", "anime"]),
        (
            "loras%5B%5D%5Bname%5D=detail&loras%5B%5D%5Bweight%5D=0.5&loras%5B%5D%5Bname%5D=anime&loras%5B%5D%5Bweight%5D=1",
            [{"name": "detail", "weight": 0.5}, {"name": "anime", "weight": 1.0}],
        ),
        ("loras%5B%5D%5Bname%5D=anime", [{"name": "anime", "weight": 1.0}]),
        ("prompt=x", None),
    ],
)
def test_a_multipart_form_sends_loras_as_json_or_as_the_openai_package_sends_a_list(form, loras):
    assert _multipart_loras(QueryDict(form)) == loras


@pytest.mark.parametrize(
    "form",
    ["loras=%7Bnot+json", "loras%5B%5D%5Bname%5D=a&loras%5B%5D%5Bname%5D=b&loras%5B%5D%5Bweight%5D=1"],
)
def test_a_multipart_form_with_loras_that_cannot_be_read_is_refused(form):
    with pytest.raises(ApiError) as refused:
        _multipart_loras(QueryDict(form))
    assert refused.value.body["error"]["param"] == "loras"
