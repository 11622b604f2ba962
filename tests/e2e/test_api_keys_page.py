"""The API keys page in a real Chromium: a key made once and shown once, Copy buttons,
settings ready to paste, and a list that fits a phone."""

import re

from playwright.sync_api import expect

from generation.api.auth import api_key_create, key_digest
from generation.models import ApiKey
from tests.e2e.conftest import shot

PHONE = {"width": 390, "height": 844}
KEY = re.compile(r"^ig_[A-Za-z0-9_-]{43}$")


def _open_keys(page, stack):
    page.goto(f"{stack['url']}/api-keys/")
    page.wait_for_load_state("load")


def _make_key(page, name: str) -> str:
    page.fill("[data-testid=api-key-name]", name)
    page.click("[data-testid=api-key-create]")
    field = page.get_by_test_id("new-api-key")
    expect(field).to_be_visible()
    return field.input_value()


def test_a_key_is_made_once_and_shown_once_however_often_the_page_is_reloaded(open_page, stack):
    page, alice = open_page("alice")
    _open_keys(page, stack)

    key = _make_key(page, "laptop")

    assert KEY.match(key)
    assert page.url == f"{stack['url']}/api-keys/", "the form redirected to the page"
    expect(page.get_by_test_id("new-api-key-notice")).to_contain_text("shown only this once")
    expect(page.get_by_test_id("api-key-row")).to_have_count(1)
    expect(page.get_by_test_id("snippet-curl")).to_contain_text(f"Bearer {key}")
    assert ApiKey.objects.get(owner=alice).digest == key_digest(key)
    shot(page, "api-keys-desktop-light")

    page.reload()

    expect(page.get_by_test_id("api-key-row")).to_have_count(1)
    assert ApiKey.objects.filter(owner=alice).count() == 1, "a reload makes no second key"
    expect(page.get_by_test_id("new-api-key")).to_have_count(0)
    expect(page.locator("body")).not_to_contain_text(key)
    expect(page.get_by_test_id("snippet-openai")).to_contain_text('api_key="YOUR_KEY"')
    page.go_back()  # nor does the back button bring the key back
    expect(page.locator("body")).not_to_contain_text(key)
    assert ApiKey.objects.filter(owner=alice).count() == 1


def test_the_copy_buttons_put_the_key_and_the_settings_on_the_clipboard(open_page, stack):
    page, alice = open_page("alice")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack["url"])
    _open_keys(page, stack)
    key = _make_key(page, "Open WebUI")

    page.get_by_test_id("copy-new-key").click()
    expect(page.get_by_test_id("copy-new-key")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == key

    page.get_by_test_id("copy-snippet-openai").click()
    expect(page.get_by_test_id("copy-snippet-openai")).to_have_text("Copied")
    pasted = page.evaluate("navigator.clipboard.readText()")
    assert f'base_url="{stack["url"]}/v1",\n    api_key="{key}",' in pasted
    assert pasted == page.get_by_test_id("snippet-openai").inner_text()

    page.get_by_test_id("copy-openwebui-a1111-auth").click()
    assert page.evaluate("navigator.clipboard.readText()") == f"alice:{key}"
    page.get_by_test_id("copy-snippet-curl").click()
    assert page.evaluate("navigator.clipboard.readText()").startswith(f"curl {stack['url']}/v1/images/generations")
    page.get_by_test_id("copy-snippet-webuiapi").click()
    port = stack["url"].rsplit(":", 1)[1]
    assert f'host="127.0.0.1", port={port}, use_https=False' in page.evaluate("navigator.clipboard.readText()")
    expect(page.get_by_test_id("copy-new-key")).to_have_text("Copy", timeout=5_000)  # the label comes back


def test_copy_works_where_the_browser_has_no_clipboard_api(open_page, stack):
    # A plain-HTTP address other than localhost has no navigator.clipboard.
    page, alice = open_page("bob")
    page.add_init_script("Object.defineProperty(navigator, 'clipboard', { value: undefined })")
    _open_keys(page, stack)
    _make_key(page, "script")

    page.get_by_test_id("copy-new-key").click()

    expect(page.get_by_test_id("copy-new-key")).to_have_text("Copied")
    expect(page.locator("[data-role=copy-status]")).to_have_text("Copied")


def test_the_key_list_and_the_settings_fit_a_phone(open_page, stack):
    for scheme in ("light", "dark"):
        page, user = open_page(f"phone-{scheme}", color_scheme=scheme, **PHONE)
        api_key_create(owner=user, name="A key with a rather long name for the laptop in the kitchen")
        revoked, _ = api_key_create(owner=user, name="old")
        revoked.revoked_at = revoked.created_at
        revoked.save()
        _open_keys(page, stack)
        _make_key(page, "Open WebUI")

        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], "no sideways scrolling"
        rows = page.get_by_test_id("api-key-row")
        expect(rows).to_have_count(3)
        for revoke in page.get_by_test_id("api-key-revoke").all():
            box = revoke.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], "Revoke is on the screen"
        copy = page.get_by_test_id("copy-new-key").bounding_box()
        assert copy["x"] + copy["width"] <= PHONE["width"]
        shot(page, f"api-keys-phone-{scheme}")

        page.get_by_test_id("api-key-revoke").first.click()
        expect(page.locator(".flash")).to_contain_text("Revoked “Open WebUI”")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        expect(page.get_by_test_id("api-snippets")).to_be_visible()


def test_the_page_in_the_dark_on_a_desktop(open_page, stack):
    page, user = open_page("dora", color_scheme="dark")
    api_key_create(owner=user, name="cron")
    _open_keys(page, stack)
    _make_key(page, "Open WebUI")

    background = page.evaluate("getComputedStyle(document.querySelector('.snippet pre')).backgroundColor")
    assert max(int(n) for n in re.findall(r"\d+", background)[:3]) < 60, f"a dark code block, not {background}"
    shot(page, "api-keys-desktop-dark")
