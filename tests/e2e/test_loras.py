"""LoRAs in the chat: a searchable list of those that fit the chosen model, up to four
with weights, on the card and in "Use these settings", and nothing sideways on a phone."""

import pytest
from django.conf import settings
from playwright.sync_api import expect

from generation.models import ImageJob
from tests.e2e.conftest import new_conversation, shot
from tests.helpers import wait_for

# tests/conftest.py `tiny_loras` builds them there (the fixture below, before the stack starts).
STACK_EXTRA_ENV = {"IMAGEGEN_LORA_DIR": str(settings.IMAGEGEN_MODEL_CACHE / "test-loras-v1")}


@pytest.fixture(scope="module", autouse=True)
def _loras_built(tiny_loras):
    assert str(tiny_loras) == STACK_EXTRA_ENV["IMAGEGEN_LORA_DIR"]


def _open_settings(page):
    page.evaluate("document.querySelector('details.advanced').open = true")


def _add(page, name):
    page.fill("[data-testid=lora-search]", name)
    page.click("[data-testid=lora-add]")


@pytest.mark.parametrize("color_scheme", ["light", "dark"])
def test_a_person_picks_loras_with_weights_and_the_card_and_reuse_keep_them(open_page, color_scheme):
    page, user = open_page(f"lora-{color_scheme}", color_scheme=color_scheme)
    new_conversation(page)
    _open_settings(page)

    # Only the demo model's family is offered: the SDXL LoRA is not in the list.
    options = page.locator("#lora-options option")
    expect(options).to_have_count(3)
    assert sorted(options.evaluate_all("els => els.map(e => e.value)")) == ["grain", "ink", "style"]
    _add(page, "xl-style")
    expect(page.locator("[data-role=lora-note]")).to_have_text('No LoRA named "xl-style" fits this model.')

    _add(page, "style")
    _add(page, "grain")
    rows = page.locator("[data-testid=lora-row]")
    expect(rows).to_have_count(2)
    rows.nth(0).locator("[data-testid=lora-weight]").fill("0.8")
    rows.nth(1).get_by_role("button", name="Remove grain").click()
    expect(rows).to_have_count(1)
    expect(options).to_have_count(2)  # grain is offered again, style is chosen
    expect(page.locator("[data-testid=settings-summary]")).to_contain_text("LoRA style:0.8")
    shot(page, f"loras-settings-{color_scheme}", full_page=False)

    for name, value in {"steps": "3", "width": "64", "height": "64"}.items():
        page.fill(f"#id_{name}", value)
    page.fill("[data-testid=prompt-input]", "a castle")
    page.press("[data-testid=prompt-input]", "Enter")
    card = page.locator(".job-card").last
    expect(card.locator("[data-testid=job-loras]")).to_have_text("LoRA style:0.8", timeout=30_000)
    job = wait_for(lambda: ImageJob.objects.filter(owner=user, status="complete").first(), timeout=60)
    assert job.loras == "style:0.8"

    # The settings stay for the next prompt (the panel closes after a send).
    _open_settings(page)
    expect(rows).to_have_count(1)
    rows.nth(0).get_by_role("button", name="Remove style").click()
    expect(rows).to_have_count(0)
    page.locator("details.advanced summary").click()  # the open panel covers the conversation
    card.locator("[data-testid=reuse-settings]").click()
    _open_settings(page)
    expect(rows).to_have_count(1)
    expect(rows.nth(0).locator("[data-testid=lora-weight]")).to_have_value("0.8")


def test_a_refused_lora_shows_its_message_by_the_picker_and_nothing_is_queued(open_page):
    page, user = open_page("lora-bad", allow=("status of 400",))
    new_conversation(page)
    _open_settings(page)
    # A hand-made value the picker would not offer (as an old form could send).
    page.evaluate("document.querySelector('[name=loras]').value = 'style:5'")
    page.fill("[data-testid=prompt-input]", "a castle")
    page.press("[data-testid=prompt-input]", "Enter")
    picker = page.locator("[data-testid=lora-picker]")
    expect(picker).to_contain_text("LoRA style: the weight is a number from -2 to 2.")
    assert not ImageJob.objects.filter(owner=user).exists()


def test_the_picker_fits_a_phone_without_sideways_scrolling(open_page):
    page, _ = open_page("lora-phone", width=390, height=844, touch=True)
    new_conversation(page)
    _open_settings(page)
    for name in ("style", "grain", "ink"):
        _add(page, name)
    expect(page.locator("[data-testid=lora-row]")).to_have_count(3)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "loras-phone", full_page=False)
