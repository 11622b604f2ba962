"""Keep working on an image in the chat: vary, edit, upscale, inpaint (mouse and touch) and
upload, each result next to its source with live progress, its lineage kept on reload."""

import base64

import numpy as np
from PIL import Image
from playwright.sync_api import expect

from chat.services import conversation_create
from generation import services
from generation.models import ImageJob
from tests.e2e.conftest import wait_chat_ready
from tests.helpers import image_file, wait_for

PHONE = {"width": 390, "height": 844}


def _kontext_source() -> str:
    from django.conf import settings

    from generation.demo_model import random_pipeline_path

    return f"tiny-kontext={random_pipeline_path(settings.IMAGEGEN_MODEL_CACHE, 'tiny-kontext')}"


# Besides `demo`, the stack knows a tiny instruction-edit model (Flux Kontext's pipeline).
STACK_EXTRA_ENV = {"IMAGEGEN_MODELS": _kontext_source()}


def _finished(user, prompt="a harbour", *, steps=10, size=64, model="demo"):
    """A conversation with one image the real worker has made."""
    conversation = conversation_create(owner=user, title="Edits")
    job = services.job_submit(
        user=user, conversation=conversation, prompt=prompt, steps=steps, width=size, height=size, model=model
    ).jobs[0]
    wait_for(lambda: ImageJob.objects.get(pk=job.pk).status == "complete", timeout=90, message="the source image")
    return conversation, ImageJob.objects.get(pk=job.pk)


def _stored(stack, name: str) -> Image.Image:
    """A file the stack stored (its media folder is its own)."""
    with Image.open(stack["data_dir"] / "media" / name) as image:
        image.load()
    return image


def _open(page, stack, conversation):
    page.goto(f"{stack['url']}/conversations/{conversation.pk}/")
    wait_chat_ready(page)


def _newest_card(page):
    return page.locator(".job-card").last


def _wait_complete(card):
    expect(card.locator("[data-testid=job-complete]")).to_be_visible(timeout=60_000)


def test_vary_edit_and_upscale_appear_under_their_source_with_progress_and_keep_their_lineage(open_page, stack):
    page, user = open_page("vera")
    conversation, source = _finished(user)
    _open(page, stack, conversation)
    card = page.locator(f"#job-{source.pk}")

    # Edit: a new prompt and a strength; its card runs live (a "[slow]" prompt: 0.4 s a step, 8 steps).
    card.locator("[data-testid=edit-button]").click()
    card.locator("[data-testid=edit-prompt]").fill("a harbour at night [slow]")
    card.locator("[data-testid=edit-strength]").fill("0.8")
    card.locator("[data-testid=edit-submit]").click()
    edited = page.locator(".job-card").nth(1)
    expect(edited.locator("[data-testid=job-processing]")).to_be_visible(timeout=30_000)
    expect(edited.locator("[data-testid=progress-bar]")).to_be_visible()
    _wait_complete(edited)

    card.locator("[data-testid=vary-subtle]").click()
    expect(page.locator(".job-card")).to_have_count(3)
    _wait_complete(_newest_card(page))
    card.locator("[data-testid=upscale]").click()
    expect(page.locator(".job-card")).to_have_count(4)
    _wait_complete(_newest_card(page))

    jobs = list(ImageJob.objects.filter(owner=user).order_by("sequence"))[1:]
    assert [(job.kind, job.strength, job.source_job_id) for job in jobs] == [
        ("img2img", 0.8, source.pk),
        ("img2img", 0.35, source.pk),
        ("upscale", 0.3, source.pk),
    ]
    assert jobs[0].prompt == "a harbour at night [slow]" and (jobs[2].width, jobs[2].height) == (128, 128)

    # After a reload each result still says where it came from, and offers the same actions.
    page.reload()
    lineage = page.locator("[data-testid=lineage]")
    expect(lineage).to_have_count(3)
    for job in jobs:
        item = page.locator(f"#job-{job.pk} [data-testid=lineage]")
        expect(item).to_contain_text(f"image {source.pk}")
        expect(item.locator("img")).to_have_js_property("naturalWidth", source.width)
        expect(page.locator(f"#job-{job.pk} [data-testid=edit-actions]")).to_be_visible()
    page.locator(f"#job-{jobs[2].pk} [data-testid=lineage-link]").click()
    assert page.url.endswith(f"#job-{source.pk}")

    # A chain: the upscale's own Vary continues from the upscale.
    page.locator(f"#job-{jobs[2].pk} [data-testid=vary-strong]").click()
    expect(page.locator(".job-card")).to_have_count(5)
    _wait_complete(_newest_card(page))
    chained = ImageJob.objects.filter(owner=user).latest("sequence")
    assert (chained.source_job_id, chained.width, chained.strength) == (jobs[2].pk, 128, 0.7)


def _paint_mask_with_mouse(page, *, x_from, x_to):
    canvas = page.locator("[data-testid=mask-canvas]")
    box = canvas.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * x_from, y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(box["x"] + box["width"] * (x_from + (x_to - x_from) * step / 10), y)
    page.mouse.up()


def test_inpaint_with_the_mouse_repaints_only_the_painted_part(open_page, stack):
    page, user = open_page("ines")
    conversation, source = _finished(user, "a field", steps=4)
    _open(page, stack, conversation)

    page.locator(f"#job-{source.pk} [data-testid=inpaint-button]").click()
    expect(page.locator("[data-testid=inpaint-panel]")).to_be_visible()
    # Nothing painted (a stroke, then undone): the viewer says so and sends nothing.
    _paint_mask_with_mouse(page, x_from=0.6, x_to=0.9)
    page.click("[data-testid=mask-undo]")
    page.fill("[data-testid=inpaint-prompt]", "a red barn")
    page.click("[data-testid=inpaint-submit]")
    expect(page.locator("[data-testid=inpaint-error]")).to_contain_text("Paint over the part")
    assert ImageJob.objects.filter(owner=user).count() == 1

    page.fill("[data-testid=brush-size]", "40")
    _paint_mask_with_mouse(page, x_from=0.6, x_to=0.9)
    page.click("[data-testid=inpaint-submit]")
    expect(page.locator("[data-testid=lightbox]")).to_be_hidden()
    expect(page.locator(".job-card")).to_have_count(2)
    result = _newest_card(page)
    _wait_complete(result)
    expect(result.locator("[data-testid=lineage]")).to_contain_text("Inpainting of image")

    job = ImageJob.objects.get(owner=user, kind="inpaint")
    painted = np.asarray(_stored(stack, job.mask_image.name)) > 0
    # The stroke went across the middle row, from 60 % to 90 % of the width.
    assert painted[31:33, 40:56].all(), "the stroke is in the mask, where it was painted"
    assert not painted[:, :28].any(), "the left part was never painted"
    made, before = _stored(stack, job.image.name), _stored(stack, source.image.name)
    assert np.array_equal(np.asarray(made.convert("RGB"))[:, :24], np.asarray(before.convert("RGB"))[:, :24])


def test_inpaint_with_a_finger_on_a_phone(open_page, stack):
    page, user = open_page("tom", touch=True, **PHONE)
    conversation, source = _finished(user, "a hill", steps=4)
    _open(page, stack, conversation)

    page.locator(f"#job-{source.pk} [data-testid=inpaint-button]").click()
    canvas = page.locator("[data-testid=mask-canvas]")
    expect(canvas).to_be_visible()
    box = canvas.bounding_box()
    touch = page.context.new_cdp_session(page)
    y = box["y"] + box["height"] * 0.5
    points = [box["x"] + box["width"] * (0.1 + 0.04 * step) for step in range(8)]
    touch.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": points[0], "y": y}]})
    for x in points[1:]:
        touch.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    touch.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    page.fill("[data-testid=inpaint-prompt]", "a tree")
    page.click("[data-testid=inpaint-submit]")
    _wait_complete(page.locator(".job-card").nth(1))

    job = ImageJob.objects.get(owner=user, kind="inpaint")
    painted = np.asarray(_stored(stack, job.mask_image.name)) > 0
    assert painted[31:33, 8:22].all(), "the finger's stroke is in the mask"
    assert not painted[:, 50:].any()


def _png_base64(width, height) -> str:
    return base64.b64encode(image_file(Image.new("RGB", (width, height), (0, 200, 0)))).decode()


def test_an_image_dropped_on_the_composer_is_edited_from_the_prompt(open_page, stack):
    page, user = open_page("drew", allow=("status of 400",))
    conversation = conversation_create(owner=user, title="Uploads")
    _open(page, stack, conversation)

    transfer = page.evaluate_handle(
        """(data) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "garden.png", { type: "image/png" }));
            return transfer;
        }""",
        _png_base64(96, 64),
    )
    page.dispatch_event("#prompt-form", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#prompt-form", "drop", {"dataTransfer": transfer})
    expect(page.locator("[data-testid=source-thumb]")).to_be_visible()
    page.locator("[data-testid=source-strength]").fill("0.5")
    page.fill("[data-testid=prompt-input]", "the garden in autumn")
    page.press("[data-testid=prompt-input]", "Enter")

    card = page.locator(".job-card").first
    _wait_complete(card)
    expect(card.locator("[data-testid=lineage]")).to_contain_text("Edit of your image")
    expect(page.locator("[data-testid=source-thumb]")).to_be_hidden()  # the next prompt starts from nothing
    job = ImageJob.objects.get(owner=user)
    assert (job.kind, job.strength, job.width, job.height) == ("img2img", 0.5, 96, 64)

    # A file that is not an image: the reason shows on the composer and nothing is queued.
    page.set_input_files("[data-testid=source-input]", {"name": "notes.png", "mimeType": "image/png", "buffer": b"hi"})
    page.fill("[data-testid=prompt-input]", "again")
    page.press("[data-testid=prompt-input]", "Enter")
    expect(page.locator("#prompt-form .errorlist")).to_contain_text("not an image")
    assert ImageJob.objects.filter(owner=user).count() == 1


def test_with_an_instruction_edit_model_a_follow_up_prompt_edits_the_last_image(open_page, stack, registered):
    registered(**dict([_kontext_source().split("=", 1)]))  # this process knows it too, as the stack does
    page, user = open_page("kim")
    conversation, source = _finished(user, "a cottage", steps=2, model="tiny-kontext")
    _open(page, stack, conversation)
    expect(page.locator("[data-testid=follow-up]")).to_be_hidden()  # the default model makes new images

    page.evaluate("document.querySelector('details.advanced').open = true")
    page.select_option("#id_model", "tiny-kontext")
    page.fill("#id_steps", "2")
    follow_up = page.locator("[data-testid=follow-up]")
    expect(follow_up).to_contain_text(f"The prompt edits image {source.pk}")
    page.fill("[data-testid=prompt-input]", "make it winter")
    page.press("[data-testid=prompt-input]", "Enter")
    edited = page.locator(".job-card").nth(1)
    _wait_complete(edited)
    expect(edited.locator("[data-testid=lineage]")).to_contain_text(f"Edit of image {source.pk}")
    # Its own card offers no inpainting or upscaling: this model does not make them.
    expect(edited.locator("[data-testid=vary-subtle]")).to_be_visible()
    expect(edited.locator("[data-testid=inpaint-button]")).to_have_count(0)

    # The next prompt edits the newest image, unless asked for a new one.
    edit_id = ImageJob.objects.filter(owner=user).latest("sequence").pk
    expect(follow_up).to_contain_text(f"image {edit_id}")
    page.click("[data-testid=follow-up-off]")
    expect(follow_up).to_be_hidden()
    page.fill("[data-testid=prompt-input]", "a new one")
    page.press("[data-testid=prompt-input]", "Enter")
    _wait_complete(page.locator(".job-card").nth(2))

    jobs = list(ImageJob.objects.filter(owner=user).order_by("sequence"))
    assert [(job.kind, job.source_job_id, job.strength) for job in jobs] == [
        ("txt2img", None, None),
        ("img2img", source.pk, None),
        ("txt2img", None, None),
    ]
    assert (jobs[1].width, jobs[1].height, jobs[1].prompt) == (64, 64, "make it winter")
