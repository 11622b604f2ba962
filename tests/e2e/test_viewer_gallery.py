"""The viewer and the gallery in a real Chromium: the gallery opens its images in the
conversation's viewer, which shows each image's settings and what can be done with it;
Zoom shows the actual size; several images of one prompt read as rows."""

import re

from playwright.sync_api import expect

from chat.services import conversation_create
from generation import services
from generation.models import ImageJob
from generation.templatetags.jobs import sampler_label
from tests.e2e.conftest import new_conversation, shot, submit_prompt, wait_chat_ready
from tests.helpers import wait_for

# The CPU worker makes up to 4 images per pass here, as the grid tests ask for.
STACK_EXTRA_ENV = {"IMAGEGEN_MAX_BATCH": "4"}
PHONE = {"width": 390, "height": 844}
TINY = {"steps": 2, "width": 64, "height": 64}


def _finished(user, prompts, *, title="Pictures", count=1, **params):
    """A conversation whose jobs the real worker has finished; returns it and its jobs, oldest first."""
    conversation = conversation_create(owner=user, title=title)
    jobs = []
    for prompt in prompts:
        jobs += services.job_submit(
            user=user, conversation=conversation, prompt=prompt, count=count, **{**TINY, **params}
        ).jobs
    wait_for(
        lambda: all(ImageJob.objects.get(pk=job.pk).status == "complete" for job in jobs),
        timeout=120,
        message="the jobs to finish",
    )
    return conversation, [ImageJob.objects.get(pk=job.pk) for job in jobs]


def _gallery(page, stack):
    page.goto(f"{stack['url']}/images/")
    page.wait_for_load_state("load")


def _settings(page) -> dict[str, str]:
    rows = page.get_by_test_id("viewer-settings").locator("div")
    return {row.locator("dt").inner_text(): row.locator("dd").inner_text() for row in rows.all()}


def _no_sideways_scroll(page):
    width = page.viewport_size["width"]
    assert page.evaluate("document.documentElement.scrollWidth") <= width, "nothing is wider than the window"


def test_the_gallery_opens_its_images_in_the_viewer_with_their_settings(open_page, stack):
    page, alice = open_page("alice")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack["url"])
    _finished(alice, ["a red kite"], title="Kites")
    _, (blue,) = _finished(alice, ["a blue kite"], title="Kites", guidance=5.5, seed=4242, negative_prompt="rain")
    _finished(alice, ["a green kite"], title="More kites")
    _gallery(page, stack)

    page.get_by_test_id("gallery-open").nth(1).click()

    viewer = page.get_by_test_id("lightbox")
    expect(viewer).to_be_visible()
    assert page.url == f"{stack['url']}/images/", "the gallery stays open behind the viewer"
    expect(viewer.locator("[data-role=count]")).to_have_text("2 of 3")
    expect(page.get_by_test_id("viewer-prompt")).to_have_text("a blue kite")
    settings = _settings(page)
    assert settings["Model"] == "demo" and settings["Size"] == "64×64" and settings["Steps"] == "2"
    assert settings["CFG"] == "5.5" and settings["Seed"] == "4242" and settings["Negative prompt"] == "rain"
    assert settings["Sampler"] == sampler_label(blue)
    expect(page.get_by_test_id("viewer-conversation")).to_have_text("Kites")
    expect(page.get_by_test_id("lightbox-download")).to_have_attribute("href", f"/jobs/{blue.pk}/image.png?download=1")
    for action in ("viewer-vary", "viewer-upscale", "viewer-inpaint", "viewer-reuse", "viewer-copy-prompt"):
        expect(page.get_by_test_id(action)).to_be_visible()
    shot(page, "viewer-desktop-light", full_page=False)

    page.get_by_test_id("viewer-copy-prompt").click()
    expect(page.get_by_test_id("viewer-copy-prompt")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "a blue kite"

    page.get_by_test_id("lightbox-next").click()
    expect(viewer.locator("[data-role=count]")).to_have_text("3 of 3")
    expect(page.get_by_test_id("viewer-prompt")).to_have_text("a red kite")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    expect(viewer.locator("[data-role=count]")).to_have_text("1 of 3")
    expect(page.get_by_test_id("viewer-conversation")).to_have_text("More kites")
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()

    # The caption still leads to the image's message.
    page.get_by_test_id("gallery-message").nth(1).click()
    page.wait_for_url(re.compile(rf"/conversations/{blue.conversation_id}/#message-{blue.message_id}$"))


def test_use_these_settings_from_the_gallery_fills_the_form_in_the_images_conversation(open_page, stack):
    page, alice = open_page("alice")
    conversation, (job,) = _finished(alice, ["a paper boat"], guidance=5.5, seed=77, width=96)
    _gallery(page, stack)
    page.get_by_test_id("gallery-open").first.click()

    page.get_by_test_id("viewer-reuse").click()

    page.wait_for_url(f"{stack['url']}/conversations/{conversation.pk}/")  # the fragment is read, then dropped
    wait_chat_ready(page)
    expect(page.get_by_test_id("prompt-input")).to_have_value("a paper boat")
    expect(page.get_by_test_id("prompt-input")).to_be_focused()
    assert page.input_value("#id_width") == "96" and page.input_value("#id_guidance") == "5.5"
    assert page.input_value("#id_seed") == "77"
    page.reload()  # a reload does not fill it again
    wait_chat_ready(page)
    expect(page.get_by_test_id("prompt-input")).to_have_value("")


def test_vary_upscale_and_inpaint_from_the_gallery_continue_in_the_images_conversation(open_page, stack):
    page, alice = open_page("alice")
    conversation, (job,) = _finished(alice, ["a windmill"])
    _gallery(page, stack)
    page.get_by_test_id("gallery-open").first.click()

    page.get_by_test_id("viewer-vary").click()

    page.wait_for_url(f"{stack['url']}/conversations/{conversation.pk}/")
    wait_chat_ready(page)
    expect(page.locator(".job-card")).to_have_count(2)
    varied = ImageJob.objects.exclude(pk=job.pk).get(owner=alice)
    assert (varied.kind, varied.source_job_id, varied.prompt) == ("img2img", job.pk, "a windmill")
    expect(page.locator(f"#job-{varied.pk} [data-testid=lineage]")).to_be_visible()

    _gallery(page, stack)
    page.locator(f"[data-testid=gallery-open][data-job-id='{job.pk}']").click()
    page.get_by_test_id("viewer-upscale").click()
    page.wait_for_url(f"{stack['url']}/conversations/{conversation.pk}/")
    wait_for(lambda: ImageJob.objects.filter(owner=alice, kind="upscale", source_job=job).exists(), timeout=10)

    _gallery(page, stack)
    page.locator(f"[data-testid=gallery-open][data-job-id='{job.pk}']").click()
    page.get_by_test_id("viewer-inpaint").click()
    page.wait_for_url(f"{stack['url']}/conversations/{conversation.pk}/")
    expect(page.get_by_test_id("inpaint-panel")).to_be_visible()
    expect(page.get_by_test_id("mask-canvas")).to_be_visible()
    expect(page.get_by_test_id("inpaint-prompt")).to_have_value("a windmill")


def test_the_viewer_on_a_conversation_shows_each_images_own_settings_and_reuses_them(open_page, stack):
    page, alice = open_page("alice")
    conversation, jobs = _finished(alice, ["four towers"], count=4, seed=900)
    page.goto(f"{stack['url']}/conversations/{conversation.pk}/")
    wait_chat_ready(page)

    page.locator(f"#job-{jobs[2].pk} [data-testid=job-complete] img").click()

    expect(page.get_by_test_id("lightbox").locator("[data-role=count]")).to_have_text("3 of 4")
    assert _settings(page)["Seed"] == "902"
    page.get_by_test_id("viewer-reuse").click()
    expect(page.get_by_test_id("lightbox")).to_be_hidden()
    expect(page.get_by_test_id("prompt-input")).to_have_value("four towers")
    expect(page.get_by_test_id("prompt-input")).to_be_focused()
    assert page.input_value("#id_seed") == "902"
    assert page.url == f"{stack['url']}/conversations/{conversation.pk}/", "the page stays where it is"


def _zoom_geometry(page) -> dict:
    return page.evaluate(
        """() => {
            const frame = document.querySelector("[data-testid=lightbox-frame]");
            const image = document.querySelector("[data-testid=lightbox-image]");
            const f = frame.getBoundingClientRect(), i = image.getBoundingClientRect();
            return {
                frame: {
                    x: f.x + f.width / 2, y: f.y + f.height / 2, width: frame.clientWidth, height: frame.clientHeight,
                },
                image: {x: i.x + i.width / 2, y: i.y + i.height / 2, width: i.width, height: i.height},
                natural: image.naturalWidth,
                scroll: {width: frame.scrollWidth, height: frame.scrollHeight, left: frame.scrollLeft},
            };
        }"""
    )


def test_zoom_shows_the_actual_size_centred_and_fit_fits_again(open_page, stack):
    page, alice = open_page("alice")
    conversation, (job,) = _finished(alice, ["a big square"], steps=1, width=512, height=512)
    page.goto(f"{stack['url']}/conversations/{conversation.pk}/")
    wait_chat_ready(page)
    page.locator("[data-testid=job-complete] img").click()
    page.wait_for_function("document.querySelector('[data-testid=lightbox-image]').naturalWidth > 0")
    fitted = _zoom_geometry(page)

    page.get_by_test_id("lightbox-zoom").click()

    zoomed = _zoom_geometry(page)
    assert zoomed["natural"] == 512 and zoomed["image"]["width"] == 512 and zoomed["image"]["height"] == 512
    assert abs(zoomed["image"]["x"] - zoomed["frame"]["x"]) <= 2, "centred across"
    assert abs(zoomed["image"]["y"] - zoomed["frame"]["y"]) <= 2, "centred down"
    expect(page.get_by_test_id("lightbox-zoom")).to_have_text("Fit")
    shot(page, "viewer-zoomed-desktop-light", full_page=False)

    page.get_by_test_id("lightbox-zoom").click()
    again = _zoom_geometry(page)
    assert again["image"] == fitted["image"], "Fit shows it as before"
    frame = fitted["frame"]
    assert min(again["image"]["width"], again["image"]["height"]) >= min(frame["width"], frame["height"]) - 2


def test_on_a_phone_the_viewer_and_the_gallery_fit_and_zoom_scrolls(open_page, stack):
    for scheme in ("light", "dark"):
        page, user = open_page(f"phone-{scheme}", color_scheme=scheme, **PHONE)
        _finished(user, ["a wide field"], steps=1, width=512, height=512)
        _finished(user, ["a small pond", "a tall tree"], negative_prompt="fog", seed=31)
        _gallery(page, stack)
        items = page.get_by_test_id("gallery-item")
        expect(items).to_have_count(3)
        _no_sideways_scroll(page)
        boxes = [items.nth(n).bounding_box() for n in range(2)]
        assert abs(boxes[0]["y"] - boxes[1]["y"]) < 2 and boxes[1]["x"] > boxes[0]["x"], "two columns on a phone"
        page.wait_for_function("[...document.querySelectorAll('.gallery img')].every((img) => img.complete)")
        shot(page, f"gallery-phone-{scheme}", full_page=False)

        page.get_by_test_id("gallery-open").nth(1).click()
        viewer = page.get_by_test_id("lightbox")
        expect(viewer).to_be_visible()
        for part in ("lightbox-close", "lightbox-zoom", "lightbox-download", "viewer-reuse", "viewer-vary"):
            box = page.get_by_test_id(part).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], f"{part} is on the screen"
            assert box["y"] + box["height"] <= PHONE["height"], f"{part} is on the screen"
        image = page.get_by_test_id("lightbox-image").bounding_box()
        assert image["height"] > 200, "the image keeps most of the screen"
        shot(page, f"viewer-phone-{scheme}", full_page=False)

        page.get_by_test_id("lightbox-next").click()
        expect(page.get_by_test_id("viewer-prompt")).to_have_text("a wide field")
        page.wait_for_function("document.querySelector('[data-testid=lightbox-image]').naturalWidth === 512")
        page.get_by_test_id("lightbox-zoom").click()
        zoomed = _zoom_geometry(page)
        assert zoomed["image"]["width"] == 512, "actual size, wider than the phone"
        assert zoomed["scroll"]["width"] >= 512 > zoomed["frame"]["width"], "the frame scrolls"
        assert zoomed["scroll"]["left"] > 0, "it opens at the middle of the image"
        page.evaluate("document.querySelector('[data-testid=lightbox-frame]').scrollLeft = 0")
        left = page.evaluate(
            "document.querySelector('[data-testid=lightbox-image]').getBoundingClientRect().left"
            " - document.querySelector('[data-testid=lightbox-frame]').getBoundingClientRect().left"
        )
        assert abs(left) <= 1, "its left edge can be scrolled to"
        shot(page, f"viewer-zoomed-phone-{scheme}", full_page=False)


def _grid(group) -> list[int]:
    """The number of cards in each row of a group's grid, top to bottom."""
    tops = [round(card.bounding_box()["y"]) for card in group.locator(".job-card").all()]
    rows: dict[int, int] = {}
    for top in tops:
        row = next((known for known in rows if abs(known - top) <= 2), top)
        rows[row] = rows.get(row, 0) + 1
    return [rows[top] for top in sorted(rows)]


def test_several_images_of_one_prompt_read_as_rows(open_page, stack):
    page, alice = open_page("alice")
    new_conversation(page)
    submit_prompt(page, "four boats", count="4", steps="2", width="64", height="64")
    submit_prompt(page, "two boats", count="2", steps="2", width="64", height="64")
    submit_prompt(page, "three boats", count="3", steps="2", width="64", height="64")
    groups = page.get_by_test_id("job-group")
    expect(groups).to_have_count(3)
    expect(page.locator("[data-testid=job-complete] img")).to_have_count(9, timeout=120_000)

    assert _grid(groups.nth(0)) == [2, 2], "four: 2 × 2"
    assert _grid(groups.nth(1)) == [2], "two: side by side"
    assert _grid(groups.nth(2)) == [3], "three: one row"
    cards = groups.nth(0).locator(".job-card")
    first, second = cards.nth(0).bounding_box(), cards.nth(1).bounding_box()
    assert abs(first["width"] - second["width"]) < 1 and second["x"] > first["x"] + first["width"] - 1
    groups.nth(0).scroll_into_view_if_needed()
    shot(page, "grid-desktop-light")

    page.set_viewport_size(PHONE)
    _no_sideways_scroll(page)
    assert _grid(groups.nth(0)) == [2, 2], "four on a phone: 2 × 2"
    assert _grid(groups.nth(1)) == [2]
    assert _grid(groups.nth(2)) == [2, 1], "three on a phone: 2 + 1"
    groups.nth(0).scroll_into_view_if_needed()
    shot(page, "grid-phone-light")


def test_the_viewer_in_the_dark(open_page, stack):
    page, alice = open_page("dora", color_scheme="dark")
    _finished(alice, ["a night harbour"], guidance=6)
    _gallery(page, stack)
    shot(page, "gallery-desktop-dark", full_page=False)
    page.get_by_test_id("gallery-open").first.click()
    expect(page.get_by_test_id("lightbox")).to_be_visible()
    background = page.evaluate("getComputedStyle(document.querySelector('.viewer-info')).color")
    assert min(int(n) for n in re.findall(r"\d+", background)[:3]) > 180, f"light text, not {background}"
    shot(page, "viewer-desktop-dark", full_page=False)
