"""What a person who types bad settings is told: every problem at once, in plain ranges."""

import json

from django.urls import reverse

from generation.forms import JobForm
from generation.models import ImageJob


def _errors(**data):
    form = JobForm(data={"prompt": "a red kite", **data})
    assert not form.is_valid()
    return {field: " ".join(messages) for field, messages in form.errors.items()}


def test_every_bad_field_is_reported_in_one_round():
    errors = _errors(prompt="", steps="0", guidance="99", seed="-5", width="2048", height="1040")
    assert set(errors) == {"prompt", "steps", "guidance", "seed", "width", "height"}


def test_the_models_size_limit_is_checked_even_when_other_fields_are_wrong():
    errors = _errors(steps="500", width="2048", height="1040", model="demo")
    assert errors["width"] == "Width: 64-1024, a multiple of 8."
    assert errors["height"] == "Height: 64-1024, a multiple of 8."
    assert errors["steps"] == "Steps: 1-100."


def test_ranges_are_named_in_plain_words():
    errors = _errors(steps="101", guidance="-1", seed="99999999999", width="100")
    assert errors == {
        "steps": "Steps: 1-100.",
        "guidance": "Guidance: 0-30.",
        "seed": "Seed: 0-4294967295, or empty for a random one.",
        "width": "Width: 64-1024, a multiple of 8.",
    }


def test_a_size_that_is_not_a_number_says_what_is_expected():
    assert _errors(height="tall") == {"height": "Height: a whole number of pixels, a multiple of 8."}


def test_an_over_long_prompt_is_refused_with_its_length_not_cut():
    errors = _errors(prompt="x" * 5000)
    assert errors == {"prompt": "Prompt: at most 2000 characters (this one has 5000). Please shorten it."}


def test_the_prompt_box_does_not_cut_what_is_pasted_and_shows_the_defaults():
    html = str(JobForm())
    assert "maxlength" not in html
    assert 'data-max-length="2000"' in html
    for name, value in {"width": "512", "height": "512", "steps": "20", "guidance": "7.0"}.items():
        assert f'name="{name}" value="{value}"' in html


def test_a_sampler_the_models_family_does_not_run_is_refused_naming_those_it_runs(registered, tiny_models):
    registered(sd3=tiny_models["tiny-sd3"])
    errors = _errors(model="sd3", scheduler="dpmpp_2m", width="64", height="64")
    assert errors == {"scheduler": "Sampler: Stable Diffusion 3 models use Euler, Heun."}
    assert _errors(scheduler="k_euler") == {"scheduler": "Sampler: choose one from the list."}


def test_a_schedule_the_sampler_does_not_take_is_refused_naming_those_it_takes():
    assert _errors(scheduler="ddim", schedule="karras") == {
        "schedule": "Schedule: DDIM runs with Automatic or SGM Uniform, not Karras."
    }
    assert _errors(schedule="exponential", scheduler="euler_a") == {
        "schedule": "Schedule: Euler a runs with Automatic or SGM Uniform, not Exponential."
    }
    assert _errors(schedule="beta") == {"schedule": "Schedule: one of Automatic, Karras, Exponential, SGM Uniform."}


def test_a_sampler_keeps_a_schedule_it_takes_and_automatic_is_the_default():
    form = JobForm(data={"prompt": "a red kite", "scheduler": "dpmpp_2m", "schedule": "karras"})
    assert form.is_valid(), form.errors
    assert (form.cleaned_data["scheduler"], form.cleaned_data["schedule"]) == ("dpmpp_2m", "karras")
    form = JobForm(data={"prompt": "a red kite"})
    assert form.is_valid(), form.errors
    assert (form.cleaned_data["scheduler"], form.cleaned_data["schedule"]) == ("euler", "automatic")


# The samplers of SD 1.x/2.x and SDXL, by A1111's names, in the order A1111 lists them.
A1111_SAMPLERS = [
    "Euler",
    "Euler a",
    "Heun",
    "LMS",
    "DPM2",
    "DPM2 a",
    "DPM++ 2M",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "DPM++ 3M SDE",
    "UniPC",
    "DDIM",
    "PLMS",
    "LCM",
]


def test_the_settings_offer_each_models_samplers_with_the_schedules_each_takes(registered, tiny_models):
    registered(flux=tiny_models["tiny-flux"])
    form = JobForm()
    assert (form["scheduler"].label, form["schedule"].label) == ("Sampler", "Schedule")
    assert [label for _, label in form.fields["scheduler"].choices] == A1111_SAMPLERS
    # The page's script offers the chosen model's (static/js/chat/composer.js).
    limits = json.loads(form.fields["model"].widget.attrs["data-limits"])
    assert (limits["flux"]["schedulers"], limits["flux"]["schedules"]) == (
        ["euler"],
        {"euler": ["automatic", "karras", "exponential"]},
    )
    assert len(limits["demo"]["schedulers"]) == 14
    assert limits["demo"]["schedules"]["ddim"] == ["automatic", "sgm_uniform"]
    assert limits["demo"]["schedules"]["dpmpp_2m"] == ["automatic", "karras", "exponential", "sgm_uniform"]


def test_the_page_refuses_an_over_long_prompt_and_keeps_it_for_editing(client, alice, alice_chat):
    client.force_login(alice)
    prompt = "a very long prompt " * 300
    response = client.post(
        reverse("chat:job_submit", args=[alice_chat.pk]), {"prompt": prompt}, HTTP_X_REQUESTED_WITH="fetch"
    )
    assert response.status_code == 400
    body = response.content.decode()
    assert "Prompt: at most 2000 characters" in body
    assert prompt.strip() in body
    assert not ImageJob.objects.exists()
