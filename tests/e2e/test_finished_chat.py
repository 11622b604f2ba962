"""The chat as a new user meets it: layout, list, images, reuse, bad input, outages, looks."""

import json
import re
from collections import Counter
from datetime import timedelta

from django.utils import timezone
from playwright.sync_api import expect

from chat.models import ComposerSettings, Conversation
from chat.services import conversation_create
from generation import services
from generation.models import ImageJob
from tests.conftest import make_user
from tests.e2e.conftest import new_conversation, shot, submit_prompt, wait_chat_ready
from tests.helpers import wait_for

TINY = {"steps": "3", "width": "64", "height": "64"}
TINY_ARGS = {"steps": 3, "width": 64, "height": 64}
PHONE = {"width": 390, "height": 844}


def _finished_conversation(user, prompts, *, title="New conversation"):
    """A conversation whose jobs the real worker has finished (small and fast)."""
    conversation = conversation_create(owner=user, title=title)
    jobs = [
        services.job_submit(user=user, conversation=conversation, prompt=prompt, steps=3, width=64, height=64).jobs[0]
        for prompt in prompts
    ]
    wait_for(
        lambda: all(ImageJob.objects.get(pk=job.pk).status == "complete" for job in jobs),
        timeout=90,
        message="the jobs to finish",
    )
    return conversation


def _block_the_worker(user, *, steps=80):
    conversation = conversation_create(owner=user, title="blocker")
    job = services.job_submit(user=user, conversation=conversation, prompt="a long one", steps=steps).jobs[0]
    wait_for(lambda: ImageJob.objects.get(pk=job.pk).status == "processing", timeout=60, message="blocker running")
    return job


def _open(page, stack, conversation):
    page.goto(f"{stack['url']}/conversations/{conversation.pk}/")
    wait_chat_ready(page)


def _duplicate_ids(page) -> list[str]:
    ids = page.eval_on_selector_all("[id]", "els => els.map(el => el.id)")
    return [name for name, count in Counter(ids).items() if count > 1]


def _in_viewport(page, locator) -> bool:
    box = locator.bounding_box()
    height = page.viewport_size["height"]
    return box is not None and box["y"] < height and box["y"] + box["height"] > 0


def _wait_in_view(page, index: int) -> None:
    """The card comes into view (below the header, above the composer) within a few seconds.

    Looked up afresh on every frame: a live update replaces the card's element.
    """
    page.evaluate(
        """(index) => new Promise((resolve, reject) => {
            const started = Date.now();
            const check = () => {
                const el = document.querySelectorAll(".job-card")[index];
                const composer = document.querySelector("[data-testid=prompt-form]").getBoundingClientRect();
                const top = document.querySelector(".topbar").getBoundingClientRect().bottom;
                const box = el.getBoundingClientRect();
                if (box.top >= top - 1 && box.top < composer.top) return resolve();
                if (Date.now() - started > 5000) return reject(new Error(`not in view: top ${box.top}`));
                requestAnimationFrame(check);
            };
            check();
        })""",
        index,
    )


def _composer_at_bottom(page) -> bool:
    box = page.get_by_test_id("prompt-form").bounding_box()
    return abs(box["y"] + box["height"] - page.viewport_size["height"]) <= 2


def test_a_conversation_opens_at_its_newest_card_with_the_composer_at_the_bottom(open_page, stack):
    page, alice = open_page("alice")
    conversation = _finished_conversation(alice, [f"harbour number {n}" for n in range(5)])
    _open(page, stack, conversation)

    cards = page.locator(".job-card")
    expect(cards).to_have_count(5)
    assert _in_viewport(page, cards.nth(4)), "the newest card is in view"
    assert not _in_viewport(page, cards.nth(0)), "the page opened at the end, not the start"
    assert _composer_at_bottom(page)
    page.evaluate("window.scrollTo(0, 0)")
    assert _composer_at_bottom(page), "the composer stays at the bottom of the window"
    assert _duplicate_ids(page) == []
    assert page.get_by_test_id("queue-position").count() == 0
    expect(page.get_by_test_id("job-complete")).to_have_count(5)
    shot(page, "conversation-desktop-light", full_page=False)

    # A new prompt: its card is added and scrolled into view.
    page.evaluate("window.scrollTo(0, 0)")
    submit_prompt(page, "one more harbour", **TINY)
    expect(cards).to_have_count(6)
    _wait_in_view(page, 5)
    expect(cards.nth(5).get_by_test_id("job-complete")).to_be_visible(timeout=60_000)
    _wait_in_view(page, 5)


def test_no_element_id_appears_twice_with_five_cards_in_every_state(open_page, stack):
    page, alice = open_page("alice")
    conversation = _finished_conversation(alice, ["done one", "done two"])
    _block_the_worker(alice)
    for prompt in ("waiting one", "waiting two", "waiting three"):
        services.job_submit(user=alice, conversation=conversation, prompt=prompt, steps=3, width=64, height=64).jobs[0]
    _open(page, stack, conversation)
    expect(page.get_by_test_id("queue-position")).to_have_count(3)
    expect(page.get_by_test_id("cancel-button")).to_have_count(3)
    assert _duplicate_ids(page) == []
    expect(page.locator(".job-card").first.locator(".chip")).to_have_text("Complete")
    eta = page.locator(".job-card").nth(2).locator(".eta")
    expect(eta).to_contain_text("Starts in")
    shot(page, "queued-desktop-light", full_page=False)


def test_the_list_shows_the_latest_activity_first_named_after_the_first_prompt(open_page, stack):
    page, alice = open_page("alice")
    new_conversation(page)
    submit_prompt(page, "A fox in the snow", **TINY)
    page.goto(f"{stack['url']}/")
    new_conversation(page)
    submit_prompt(page, "Two owls on a branch at night", **TINY)
    expect(page.get_by_test_id("job-complete")).to_be_visible(timeout=60_000)

    page.goto(f"{stack['url']}/")
    items = page.get_by_test_id("conversation-item")
    expect(items).to_have_count(2)
    expect(items.nth(0)).to_contain_text("Two owls on a branch at night")
    expect(items.nth(1)).to_contain_text("A fox in the snow")
    expect(items.nth(0)).to_contain_text("just now")
    expect(page.locator("body")).not_to_contain_text("0 minutes")
    expect(items.nth(0).locator(".thumb img")).to_be_visible()
    shot(page, "list-desktop-light", full_page=False)

    # New activity in the older one moves it to the top.
    items.nth(1).locator(".conversation-title").click()
    submit_prompt(page, "the fox again", **TINY)
    page.goto(f"{stack['url']}/")
    expect(items.nth(0)).to_contain_text("A fox in the snow")


def test_the_lightbox_shows_full_size_images_with_next_previous_download_and_escape(open_page, stack):
    page, alice = open_page("alice")
    conversation = _finished_conversation(alice, ["first lake", "second lake", "third lake"])
    _open(page, stack, conversation)

    page.locator("[data-testid=job-complete] img").nth(1).click()
    box = page.get_by_test_id("lightbox")
    expect(box).to_be_visible()
    assert page.url.endswith(f"/conversations/{conversation.pk}/"), "the page stays in the app"
    expect(box).to_contain_text("2 of 3")
    expect(box).to_contain_text("second lake")
    page.get_by_test_id("lightbox-next").click()
    expect(box).to_contain_text("3 of 3")
    expect(page.get_by_test_id("lightbox-next")).to_be_disabled()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    expect(box).to_contain_text("1 of 3")
    first = ImageJob.objects.filter(conversation=conversation).order_by("pk").first()
    expect(page.get_by_test_id("lightbox-download")).to_have_attribute("href", f"/jobs/{first.pk}/image.png?download=1")
    page.get_by_test_id("lightbox-zoom").click()
    expect(page.locator(".lightbox-frame")).to_have_class(re.compile("zoomed"))
    shot(page, "lightbox-desktop-light", full_page=False)
    page.keyboard.press("Escape")
    expect(box).to_be_hidden()


def test_my_images_lists_the_users_own_images_and_leads_back_to_each_message(open_page, stack):
    page, alice = open_page("alice")
    bob_page, bob = open_page("bob")
    _finished_conversation(bob, ["bob's private boat"])
    conversation = _finished_conversation(alice, ["alice's red kite", "alice's blue kite"])
    page.get_by_role("link", name="My images").click()
    items = page.get_by_test_id("gallery-item")
    expect(items).to_have_count(2)
    expect(items.nth(0)).to_contain_text("alice's blue kite")
    expect(page.locator("body")).not_to_contain_text("bob's private boat")
    shot(page, "gallery-desktop-light", full_page=False)
    items.nth(1).locator(".gallery-caption").click()  # the image itself opens the viewer
    page.wait_for_url(re.compile(rf"/conversations/{conversation.pk}/#message-\d+$"))
    target = page.locator(".message:target")
    expect(target).to_contain_text("Your image is ready.")
    assert _in_viewport(page, target)
    bob_page.close()


def test_a_finished_card_reuses_its_settings_and_runs_again_with_a_new_or_the_same_seed(open_page, stack):
    page, alice = open_page("alice")
    new_conversation(page)
    submit_prompt(page, "a paper crane", steps="4", width="96", height="64", guidance="5.5")
    first = page.locator(".job-card").nth(0)
    expect(first.get_by_test_id("job-complete")).to_be_visible(timeout=60_000)
    original = ImageJob.objects.get(owner=alice)

    first.get_by_test_id("reuse-settings").click()
    expect(first.locator("[data-role=notice]")).to_have_text("Settings copied into the form below.")
    expect(page.get_by_test_id("prompt-input")).to_have_value("a paper crane")
    assert page.input_value("#id_width") == "96" and page.input_value("#id_guidance") == "5.5"
    expect(page.get_by_test_id("settings-summary")).to_contain_text("96×64")
    expect(page.get_by_test_id("settings-summary")).to_contain_text("4 steps")

    first.get_by_test_id("again-button").click()
    expect(page.locator(".job-card")).to_have_count(2)
    first.get_by_test_id("same-seed-button").click()
    expect(page.locator(".job-card")).to_have_count(3)
    expect(page.get_by_test_id("job-complete")).to_have_count(3, timeout=60_000)
    again, same = ImageJob.objects.filter(owner=alice).exclude(pk=original.pk).order_by("pk")
    for job in (again, same):
        assert (job.prompt, job.width, job.height, job.steps, job.guidance) == ("a paper crane", 96, 64, 4, 5.5)
    assert again.seed != original.seed
    assert same.seed == original.seed
    shot(page, "reuse-desktop-light", full_page=False)


def test_a_pasted_over_long_prompt_is_refused_with_a_visible_message_not_cut(open_page, stack):
    page, alice = open_page("alice")
    new_conversation(page)
    prompt = page.get_by_test_id("prompt-input")
    prompt.fill("a castle " * 600)  # 5,400 characters
    expect(page.get_by_test_id("prompt-counter")).to_have_text("5399 / 2000")
    prompt.press("Enter")
    notice = page.get_by_test_id("form-notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("5399 characters; the limit is 2000")
    assert len(prompt.input_value()) == 5400, "nothing was cut"
    expect(page.locator(".job-card")).to_have_count(0)
    assert not ImageJob.objects.filter(owner=alice).exists()
    shot(page, "too-long-desktop-light", full_page=False)

    # Shortened, it goes through and the notice goes away.
    prompt.fill("a castle")
    expect(notice).to_be_hidden()
    prompt.press("Enter")
    expect(page.locator(".job-card")).to_have_count(1)


def test_after_a_refused_prompt_the_first_bad_field_has_the_focus_and_every_error_shows(open_page, stack):
    page, alice = open_page("alice", allow=("status of 400",))
    new_conversation(page)
    page.locator("details.advanced summary").click()
    page.fill("#id_width", "2048")
    page.fill("#id_height", "1040")
    page.fill("#id_steps", "0")
    page.fill("[data-testid=prompt-input]", "a mountain")
    page.get_by_test_id("submit-button").click()

    expect(page.locator(".field-width .errorlist")).to_have_text("Width: 64-1024, a multiple of 8.")
    expect(page.locator(".field-height .errorlist")).to_have_text("Height: 64-1024, a multiple of 8.")
    expect(page.locator(".field-steps .errorlist")).to_have_text("Steps: 1-100.")
    expect(page.locator("#id_width")).to_be_focused()
    shot(page, "field-errors-desktop-light", full_page=False)

    page.fill("#id_width", "512")
    page.fill("#id_height", "512")
    page.fill("#id_steps", "3")
    page.get_by_test_id("submit-button").click()
    expect(page.locator(".job-card")).to_have_count(1)
    expect(page.get_by_test_id("prompt-input")).to_be_focused()


def test_while_the_server_is_down_the_page_says_so_and_works_again_when_it_is_back(open_page, stack):
    page, alice = open_page(
        "alice", allow=("ERR_CONNECTION_REFUSED", "ERR_CONNECTION_RESET", "WebSocket connection to")
    )
    _block_the_worker(alice)
    new_conversation(page)
    submit_prompt(page, "a lantern", **TINY)
    card = page.locator(".job-card").nth(0)
    expect(card.get_by_test_id("queue-position")).to_have_text("Position: 1")
    banner = page.get_by_test_id("offline-banner")
    expect(banner).to_be_hidden()

    stack["stop_web"]()
    try:
        expect(banner).to_be_visible()
        card.get_by_test_id("cancel-button").click()
        expect(card.locator("[data-role=notice]")).to_contain_text("Could not reach the server")
        page.fill("[data-testid=prompt-input]", "sent while down")
        page.press("[data-testid=prompt-input]", "Enter")
        expect(page.get_by_test_id("form-notice")).to_contain_text("Could not reach the server")
        expect(page.get_by_test_id("prompt-input")).to_have_value("sent while down")
        shot(page, "offline-desktop-light", full_page=False)
    finally:
        stack["start_web_again"]()

    expect(banner).to_be_hidden(timeout=30_000)
    card.get_by_test_id("cancel-button").click()
    expect(page.locator(".job-card").nth(0)).to_have_attribute("data-status", "cancelled")
    page.press("[data-testid=prompt-input]", "Enter")
    expect(page.locator(".job-card")).to_have_count(2)
    expect(page.get_by_test_id("form-notice")).to_be_hidden()


def test_dark_mode_follows_the_system_setting(open_page, stack):
    page, alice = open_page("alice", color_scheme="dark", allow=("status of 404",))
    conversation = _finished_conversation(alice, ["a night sky", "a dark forest"], title="Night pictures")
    _open(page, stack, conversation)
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    channels = [int(n) for n in re.findall(r"\d+", background)[:3]]
    assert max(channels) < 60, f"a dark background, not {background}"
    text = page.evaluate("getComputedStyle(document.body).color")
    assert min(int(n) for n in re.findall(r"\d+", text)[:3]) > 180, f"light text, not {text}"
    shot(page, "conversation-desktop-dark", full_page=False)
    page.goto(f"{stack['url']}/")
    shot(page, "list-desktop-dark", full_page=False)
    page.goto(f"{stack['url']}/images/")
    shot(page, "gallery-desktop-dark", full_page=False)
    page.goto(f"{stack['url']}/no-such-page/")
    expect(page.get_by_test_id("error-page")).to_contain_text("Page not found")
    shot(page, "404-desktop-dark", full_page=False)


def test_the_main_scenario_on_a_phone(open_page, stack):
    for scheme in ("light", "dark"):
        username = f"phone-{scheme}"
        page, user = open_page(username, color_scheme=scheme, **PHONE)
        header = page.locator(".topbar").bounding_box()
        assert header["height"] < 56, "the header stays on one line"
        new_conversation(page)
        submit_prompt(page, "a tall lighthouse", steps="3", width="64", height="96")
        submit_prompt(page, "a short lighthouse", **TINY)
        cards = page.locator(".job-card")
        expect(cards.nth(1).get_by_test_id("job-complete")).to_be_visible(timeout=60_000)
        expect(cards.nth(0).get_by_test_id("job-complete")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], (
            "nothing is wider than the phone"
        )
        assert _composer_at_bottom(page)
        # The finished card is taller than the running one was: the page follows it.
        wait_for(lambda p=page, c=cards: _in_viewport(p, c.nth(1)), timeout=5, message="the newest card in view")
        shot(page, f"conversation-phone-{scheme}", full_page=False)
        cards.nth(0).locator("[data-testid=job-complete] img").click()
        expect(page.get_by_test_id("lightbox")).to_be_visible()
        shot(page, f"lightbox-phone-{scheme}", full_page=False)
        page.keyboard.press("Escape")
        page.goto(f"{stack['url']}/")
        expect(page.get_by_test_id("conversation-item").first).to_contain_text("a tall lighthouse")
        shot(page, f"list-phone-{scheme}", full_page=False)
        page.goto(f"{stack['url']}/images/")
        expect(page.get_by_test_id("gallery-item")).to_have_count(2)
        shot(page, f"gallery-phone-{scheme}", full_page=False)


def test_up_in_an_empty_composer_recalls_the_last_prompt_and_the_tab_shows_progress(open_page, stack):
    page, alice = open_page("alice")
    new_conversation(page)
    submit_prompt(page, "a slow sunrise", steps="40", width="512", height="512")
    prompt = page.get_by_test_id("prompt-input")
    expect(prompt).to_have_value("")
    prompt.press("ArrowUp")
    expect(prompt).to_have_value("a slow sunrise")
    card = page.locator(".job-card").nth(0)
    expect(card.get_by_test_id("job-processing")).to_be_visible(timeout=60_000)
    expect(page).to_have_title(re.compile(r"^\(\d+%\) a slow sunrise · Imagegen$"))
    expect(card.locator("[data-role=remaining]")).to_contain_text(re.compile("left|Almost done"))
    expect(card.get_by_test_id("job-complete")).to_be_visible(timeout=60_000)
    expect(page).to_have_title("a slow sunrise · Imagegen")
    assert Conversation.objects.get(owner=alice).title == "a slow sunrise"


def _hold_in_queue(job):
    """Keep a job queued (as a retry waiting for its time) without keeping the worker busy."""
    ImageJob.objects.filter(pk=job.pk).update(not_before=timezone.now() + timedelta(hours=1))


def test_an_older_queue_update_never_overwrites_a_newer_one(open_page, stack):
    page, alice = open_page("alice")
    conversation = conversation_create(owner=alice, title="Versions")
    job = services.job_submit(
        user=alice, conversation=conversation, prompt="wait here", steps=3, width=64, height=64
    ).jobs[0]
    _hold_in_queue(job)
    sockets = []
    # The page's WebSocket talks to this stand-in, which sends what the test says.
    page.route_web_socket("**/ws/events/", lambda ws: sockets.append(ws))
    _open(page, stack, conversation)
    wait_for(lambda: sockets, timeout=10, message="the page's WebSocket")
    socket = sockets[-1]
    position = page.get_by_test_id("queue-position")

    def positions(version, place):
        entry = {"job_id": job.pk, "position": place, "estimated_start_seconds": 60, "estimated_seconds": 90}
        socket.send(json.dumps({"type": "queue.positions", "version": version, "jobs": [entry]}))

    entry = {
        "job_id": job.pk,
        "message_id": job.message_id,
        "conversation_id": conversation.pk,
        "status": "queued",
        "progress": 0,
        "position": 3,
        "estimated_start_seconds": 120,
        "estimated_seconds": 150,
    }
    socket.send(
        json.dumps({"type": "snapshot", "version": 5, "jobs": [entry], "service": {"state": "closed", "message": ""}})
    )
    expect(position).to_have_text("Position: 3")
    positions(4, 9)  # older than the snapshot: ignored
    positions(6, 2)
    expect(position).to_have_text("Position: 2")
    positions(5, 7)  # late and older: ignored
    positions(6, 8)  # the same broadcast again: ignored
    page.wait_for_timeout(300)
    expect(position).to_have_text("Position: 2")
    positions(7, 4)
    expect(position).to_have_text("Position: 4")
    page.wait_for_timeout(300)
    expect(position).to_have_text("Position: 4")
    # Between events the ETA counts down by itself.
    eta = page.locator(".job-card .eta")
    expect(eta).to_have_text("Starts in about 60 s, ready in about 90 s")
    expect(eta).to_have_text(re.compile(r"Starts in about 5\d s"), timeout=12_000)


def test_with_no_lora_installed_the_settings_say_where_loras_come_from(open_page):
    page, _ = open_page("no-loras")
    new_conversation(page)
    page.evaluate("document.querySelector('details.advanced').open = true")
    picker = page.locator("[data-testid=lora-picker]")
    expect(picker).to_contain_text("No LoRAs are installed. An operator adds them to the LoRA folder")
    expect(picker.locator("[data-testid=lora-search]")).to_be_hidden()


def _inside(page, locator, frame=None) -> bool:
    """Wholly in the window (and in `frame`'s visible box): nothing of it is cut off."""
    box = locator.bounding_box()
    view = {"x": 0, "y": 0, "width": page.viewport_size["width"], "height": page.viewport_size["height"]}
    bounds = [view] + ([frame.bounding_box()] if frame is not None else [])
    return box is not None and all(
        box["x"] >= b["x"] - 1
        and box["y"] >= b["y"] - 1
        and box["x"] + box["width"] <= b["x"] + b["width"] + 1
        and box["y"] + box["height"] <= b["y"] + b["height"] + 1
        for b in bounds
    )


def _no_sideways_scroll(page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"{page.url} is {width} px wide"


def test_the_open_settings_panel_shows_every_setting_whole_on_a_laptop_and_a_phone(open_page, stack):
    for (width, height), scheme in (((1280, 800), "light"), ((390, 844), "dark")):
        page, _ = open_page(
            f"settings-{width}", width=width, height=height, color_scheme=scheme, allow=("status of 400",)
        )
        new_conversation(page)
        quick = page.get_by_test_id("quick-settings")
        for name in ("#id_model", "[data-testid=size-choice]", "#id_count"):
            assert _inside(page, quick.locator(name)), f"{name} next to the prompt at {width}x{height}"
        page.locator("details.advanced summary").click()
        panel = page.get_by_test_id("settings-panel")
        fields = panel.locator(".field")
        assert fields.count() >= 8
        for index in range(fields.count()):
            field = fields.nth(index)
            label = field.locator("label").first.inner_text()
            assert _inside(page, field, panel), f"{label!r} whole at {width}x{height}"
        assert page.evaluate(
            "(el => el.scrollHeight <= el.clientHeight + 1)(document.querySelector('details.advanced'))"
        ), "the panel does not scroll inside"
        _no_sideways_scroll(page)
        shot(page, f"settings-{'desktop' if width > 600 else 'phone'}-{scheme}", full_page=False)
        # A refused setting opens the panel with its error in view.
        page.fill("#id_guidance", "99")
        page.fill("[data-testid=prompt-input]", "a harbour")
        page.press("[data-testid=prompt-input]", "Enter")
        error = page.locator(".field-guidance .errorlist")
        expect(error).to_contain_text("Guidance: 0-30")
        assert _inside(page, error, page.get_by_test_id("settings-panel")), f"the error in view at {width}x{height}"


def test_the_settings_are_remembered_for_the_person_across_reloads_and_conversations(open_page, stack):
    page, alice = open_page("alice")
    new_conversation(page)
    page.select_option("[data-testid=size-choice]", "768x432")
    page.fill("#id_count", "2")
    page.locator("details.advanced summary").click()
    page.fill("#id_steps", "7")
    page.press("#id_steps", "Tab")
    expect(page.locator("#id_width")).to_have_value("768")
    wait_for(
        lambda: ComposerSettings.objects.filter(owner=alice, values__steps="7").exists(),
        timeout=10,
        message="the settings remembered",
    )
    page.reload()
    wait_chat_ready(page)
    for selector, value in (("#id_width", "768"), ("#id_height", "432"), ("#id_count", "2"), ("#id_steps", "7")):
        expect(page.locator(selector)).to_have_value(value)
    expect(page.get_by_test_id("size-choice")).to_have_value("768x432")
    expect(page.get_by_test_id("settings-summary")).to_contain_text("768×432")

    # A prompt sent remembers what it was sent with, for the next conversation too.
    submit_prompt(page, "a lighthouse", **TINY)
    page.click("#new-conversation")
    wait_chat_ready(page)
    for selector, value in (("#id_width", "64"), ("#id_height", "64"), ("#id_count", "2"), ("#id_steps", "3")):
        expect(page.locator(selector)).to_have_value(value)
    expect(page.get_by_test_id("size-choice")).to_have_value("custom")
    expect(page.get_by_test_id("size-choice").locator("option:checked")).to_have_text("64×64 (custom)")
    assert page.input_value("#id_seed") == "", "the seed is not kept: every prompt gets new noise"

    other, _ = open_page("bob")
    new_conversation(other)
    expect(other.locator("#id_width")).to_have_value("512")
    expect(other.locator("#id_count")).to_have_value("1")


def test_one_message_about_the_prompt_at_a_time(open_page, stack):
    for (width, height), scheme in (((1280, 800), "light"), ((390, 844), "dark")):
        page, _ = open_page(
            f"prompt-{width}", width=width, height=height, color_scheme=scheme, allow=("status of 400",)
        )
        new_conversation(page)
        page.press("[data-testid=prompt-input]", "Enter")
        form = page.get_by_test_id("prompt-form")
        expect(form).to_contain_text("Please describe the image you want.")
        page.fill("[data-testid=prompt-input]", "x" * 5000)
        page.press("[data-testid=prompt-input]", "Enter")
        expect(page.get_by_test_id("form-notice")).to_contain_text("the limit is 2000")
        expect(form).not_to_contain_text("Please describe the image you want.")
        assert _inside(page, page.get_by_test_id("form-notice")), f"the message in view at {width}x{height}"
        shot(page, f"prompt-too-long-{'desktop' if width > 600 else 'phone'}-{scheme}", full_page=False)


def test_the_running_image_stays_in_view_and_positions_read_as_a_shared_queue(open_page, stack):
    page, alice = open_page("alice")
    bob = make_user("bob")
    conversation = conversation_create(owner=alice, title="busy")
    running = services.job_submit(user=alice, conversation=conversation, prompt="a long one", steps=80).jobs[0]
    wait_for(lambda: ImageJob.objects.get(pk=running.pk).status == "processing", timeout=60, message="running")
    services.job_submit(user=bob, conversation=conversation_create(owner=bob), prompt="bob's", **TINY_ARGS)
    _open(page, stack, conversation)
    for n in range(4):
        submit_prompt(page, f"waiting {n}", **TINY)
    strip = page.get_by_test_id("running-strip")
    expect(strip.get_by_test_id("strip-running")).to_contain_text("Running now")
    expect(strip.get_by_test_id("strip-running")).to_contain_text("a long one")
    expect(strip.get_by_test_id("strip-running")).to_contain_text(re.compile(r"\d+%"))
    expect(strip.get_by_test_id("strip-next")).to_contain_text("Position: 2")
    expect(strip.get_by_test_id("strip-next")).to_contain_text("1 image ahead of yours in the shared queue")
    expect(strip.get_by_test_id("strip-next")).to_contain_text("4 of yours waiting")
    running_card = page.locator(f"#job-{running.pk}")
    assert not _in_viewport(page, running_card), "the page followed the newest card"
    assert _inside(page, strip), "the strip is in view at the newest card"
    shot(page, "running-strip-desktop-light", full_page=False)
    strip.get_by_test_id("strip-running").click()
    wait_for(lambda: _in_viewport(page, running_card), timeout=5, message="the running card in view")

    phone, _ = open_page("alice", existing=True, color_scheme="dark", **PHONE)
    _open(phone, stack, conversation)
    phone.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    expect(phone.get_by_test_id("strip-running")).to_contain_text("Running now")
    assert _inside(phone, phone.get_by_test_id("running-strip"))
    _no_sideways_scroll(phone)
    shot(phone, "running-strip-phone-dark", full_page=False)
    running_card.get_by_test_id("cancel-button").click()
    expect(strip.get_by_test_id("strip-running")).to_be_hidden(timeout=30_000)


def test_a_cancelled_card_says_it_once_and_a_failed_login_keeps_the_username(open_page, stack, browser):
    page, alice = open_page("alice")
    _block_the_worker(alice)
    new_conversation(page)
    submit_prompt(page, "never mind", **TINY)
    card = page.locator(".job-card").nth(0)
    card.get_by_test_id("cancel-button").click()
    expect(card).to_have_attribute("data-status", "cancelled")
    text = card.inner_text()
    assert text.count("Cancelled") == 1 and "No image was made." in text, text

    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        login = context.new_page()
        login.goto(f"{stack['url']}/login/")
        login.fill("#id_username", "alice")
        login.fill("#id_password", "not her password")
        login.click("button[type=submit]")
        expect(login.locator("[role=alert]")).to_contain_text("didn't match")
        expect(login.locator("#id_username")).to_have_value("alice")
        expect(login.locator("#id_password")).to_be_focused()
    finally:
        context.close()


def test_no_page_scrolls_sideways_on_a_phone_and_the_admin_job_list_fits_a_laptop(open_page, stack):
    staff = make_user("root")
    staff.is_staff = staff.is_superuser = True
    staff.save()
    conversation = _finished_conversation(staff, ["a lighthouse at dusk with a very long prompt " * 3])
    job = ImageJob.objects.filter(conversation=conversation).first()
    pages = [
        "/",
        f"/conversations/{conversation.pk}/",
        "/images/",
        "/api-keys/",
        "/admin/",
        "/admin/generation/imagejob/",
        f"/admin/generation/imagejob/{job.pk}/change/",
        "/admin/generation/imagejob/queue/",
        "/no-such-page/",
    ]
    for scheme in ("light", "dark"):
        page, _ = open_page("root", existing=True, color_scheme=scheme, allow=("status of 404",), **PHONE)
        bar = page.locator(".topbar")
        for link in ("Chats", "Images", "Keys", "Admin", "Log out"):
            assert _inside(page, bar.get_by_text(link, exact=True)), f"{link} whole in the top bar"
        for path in pages:
            page.goto(f"{stack['url']}{path}")
            _no_sideways_scroll(page)
        shot(page, f"not-found-phone-{scheme}", full_page=False)
        page.goto(f"{stack['url']}/admin/generation/imagejob/")
        shot(page, f"admin-jobs-phone-{scheme}", full_page=False)
    laptop, _ = open_page("root", existing=True)
    laptop.goto(f"{stack['url']}/admin/generation/imagejob/")
    _no_sideways_scroll(laptop)
    assert _inside(laptop, laptop.locator("#result_list")), "the job list is not cut off at 1280 px"
    shot(laptop, "admin-jobs-desktop-light", full_page=False)
    login = laptop.context.new_page()
    login.set_viewport_size(PHONE)
    login.goto(f"{stack['url']}/login/")
    _no_sideways_scroll(login)


def test_a_sidebar_lists_recent_conversations_on_a_wide_screen_and_folds_away_on_a_phone(open_page, stack):
    page, alice = open_page("alice")
    older = _finished_conversation(alice, ["a red kite"], title="Kites")
    newer = _finished_conversation(alice, ["a blue boat"], title="Boats")
    _open(page, stack, older)
    sidebar = page.get_by_test_id("sidebar")
    expect(sidebar).to_be_visible()
    items = sidebar.get_by_test_id("conversation-item")
    expect(items).to_have_count(2)
    expect(items.nth(0)).to_contain_text("Boats")
    expect(items.nth(1)).to_have_attribute("aria-current", "page")
    assert items.nth(0).locator("img").evaluate("img => img.complete && img.naturalWidth") == 64, "a thumbnail"
    shot(page, "sidebar-desktop-light", full_page=False)
    items.nth(0).locator(".conversation-title").click()
    page.wait_for_url(f"{stack['url']}/conversations/{newer.pk}/")
    page.get_by_test_id("sidebar").locator("#new-conversation").click()
    wait_chat_ready(page)
    expect(page.get_by_test_id("sidebar").get_by_test_id("conversation-item")).to_have_count(3)

    phone, _ = open_page("alice", existing=True, color_scheme="dark", **PHONE)
    _open(phone, stack, older)
    expect(phone.get_by_test_id("sidebar")).to_be_hidden()
    expect(phone.locator(".topbar").get_by_text("Chats", exact=True)).to_be_visible()
