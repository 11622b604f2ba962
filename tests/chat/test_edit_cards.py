"""An edit's card on the page: where it came from, its actions, and "Again" from its source."""

import re

from django.urls import reverse
from PIL import Image

from generation.models import ImageJob
from tests.fakes import FakeGenerator
from tests.helpers import run_pass

FETCH = {"HTTP_X_REQUESTED_WITH": "fetch"}


def _card(client, job) -> str:
    return client.get(reverse("generation:job_card", args=[job.pk])).content.decode()


def test_an_edit_card_shows_its_source_and_again_redoes_the_edit(client, alice, alice_chat, submit, runner_for):
    runner = runner_for(FakeGenerator())
    source = submit("a pier")
    run_pass(runner)
    edit = submit("a pier at night", source_job=source.pk, kind="img2img", strength=0.45)
    run_pass(runner)
    client.force_login(alice)

    card = _card(client, edit)
    assert f'href="#job-{source.pk}"' in card and "Edit of" in card and "strength 0.45" in card
    assert 'data-testid="vary-subtle"' in card and 'data-testid="inpaint-button"' in card
    thumb = client.get(reverse("generation:job_source", args=[edit.pk]))
    assert thumb.status_code == 200 and thumb["Content-Type"] == "image/png"

    again = re.search(r'<form[^>]*data-submit>(?:(?!</form>).)*data-testid="again-button"', card, re.S).group(0)
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', again))
    response = client.post(reverse("chat:job_submit", args=[alice_chat.pk]), fields, **FETCH)
    assert response.status_code == 201
    redone = ImageJob.objects.latest("sequence")
    assert (redone.kind, redone.strength, redone.source_job_id, redone.prompt) == (
        "img2img",
        0.45,
        source.pk,
        "a pier at night",
    )
    assert redone.seed != edit.seed


def test_an_inpainting_card_offers_no_again_its_mask_is_painted_anew(client, alice, submit, runner_for):
    runner = runner_for(FakeGenerator())
    source = submit("a pier")
    run_pass(runner)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    inpainted = submit("a boat", source_job=source.pk, mask=mask)
    run_pass(runner)
    client.force_login(alice)

    card = _card(client, inpainted)
    assert "Inpainting of" in card
    assert 'data-testid="again-button"' not in card and 'data-testid="vary-strong"' in card


def test_the_admin_shows_an_edits_source(admin_client, submit, runner_for):
    runner = runner_for(FakeGenerator())
    source = submit("a pier")
    run_pass(runner)
    edit = submit("a pier at night", source_job=source.pk)

    page = admin_client.get(reverse("admin:generation_imagejob_change", args=[edit.pk])).content.decode()
    source_url = reverse("admin:generation_imagejob_source", args=[edit.pk])
    assert source_url in page and "Image to image" in page
    assert admin_client.get(source_url)["Content-Type"] == "image/png"
