"""Choosing a model of another family in a real Chromium: its defaults and bounds, and its image."""

from django.conf import settings
from playwright.sync_api import expect

from generation.demo_model import random_pipeline_path
from tests.e2e.conftest import new_conversation, shot, submit_prompt

_CACHE = settings.IMAGEGEN_MODEL_CACHE
_FLUX, _XL = random_pipeline_path(_CACHE, "tiny-flux"), random_pipeline_path(_CACHE, "tiny-sdxl")
STACK_EXTRA_ENV = {"IMAGEGEN_MODELS": f"flux={_FLUX},xl={_XL}"}


def test_choosing_a_flux_model_moves_the_settings_to_its_defaults_and_makes_its_image(open_page):
    page, _ = open_page("alice")
    new_conversation(page)
    page.evaluate("document.querySelector('details.advanced').open = true")
    expect(page.locator("#id_width")).to_have_value("512")

    page.select_option("#id_model", "flux")

    expect(page.locator("#id_width")).to_have_value("1024")
    expect(page.locator("#id_guidance")).to_have_value("3.5")
    expect(page.locator("#id_width")).to_have_attribute("step", "16")
    expect(page.locator("#id_negative_prompt")).to_be_disabled()
    expect(page.get_by_test_id("settings-summary")).to_contain_text("flux")

    submit_prompt(page, "a lighthouse", width="64", height="64", steps="3")
    card = page.locator(".job-card").last
    expect(card.locator("[data-testid=job-complete] img")).to_be_visible(timeout=90_000)
    expect(card).to_contain_text("flux")
    expect(card.locator("figcaption")).to_contain_text("Guidance 3.5")
    shot(page, "flux-model")

    page.evaluate("document.querySelector('details.advanced').open = true")
    page.select_option("#id_model", "xl")  # a changed size stays; the untouched guidance moves
    expect(page.locator("#id_width")).to_have_value("64")
    expect(page.locator("#id_guidance")).to_have_value("5")
    expect(page.locator("#id_negative_prompt")).to_be_enabled()


def test_the_sampler_and_schedule_lists_offer_what_the_chosen_model_runs(open_page):
    page, _ = open_page("alice")
    new_conversation(page)
    page.evaluate("document.querySelector('details.advanced').open = true")
    expect(page.locator("label[for=id_scheduler]")).to_have_text("Sampler")
    offered = "(select) => [...select.options].filter((option) => !option.disabled).map((option) => option.text)"

    page.select_option("#id_model", "flux")
    assert page.eval_on_selector("#id_scheduler", offered) == ["Euler"]
    assert page.eval_on_selector("#id_schedule", offered) == ["Automatic", "Karras", "Exponential"]

    page.select_option("#id_model", "demo")
    assert len(page.eval_on_selector("#id_scheduler", offered)) == 14
    page.select_option("#id_schedule", "karras")
    page.select_option("#id_scheduler", "ddim")  # DDIM takes no Karras: back to Automatic
    assert page.eval_on_selector("#id_schedule", offered) == ["Automatic", "SGM Uniform"]
    expect(page.locator("#id_schedule")).to_have_value("automatic")

    page.select_option("#id_scheduler", "dpmpp_2m")
    page.select_option("#id_schedule", "karras")
    expect(page.get_by_test_id("settings-summary")).to_contain_text("DPM++ 2M · Karras")
    shot(page, "sampler-and-schedule")
    submit_prompt(page, "a kite", width="64", height="64", steps="2")
    card = page.locator(".job-card").last
    expect(card.locator("figcaption")).to_contain_text("DPM++ 2M Karras", timeout=90_000)
    page.evaluate("document.querySelector('details.advanced').open = true")
    page.select_option("#id_model", "flux")  # a sampler Flux does not run goes back to its default
    expect(page.locator("#id_scheduler")).to_have_value("euler")
