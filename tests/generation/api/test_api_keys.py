"""API keys: made from the page, the admin and the command; shown once; stored as a
digest; revoked."""

import html
import io
import re

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from generation.api.auth import api_key_authenticate, api_key_create, api_key_revoke, key_digest
from generation.models import ApiKey
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

KEY = re.compile(r"ig_[A-Za-z0-9_-]{43}")


def test_a_key_is_stored_only_as_its_digest_and_identifies_its_owner(alice):
    api_key, key = api_key_create(owner=alice, name="Open WebUI")

    assert KEY.fullmatch(key)
    stored = ApiKey.objects.get(pk=api_key.pk)
    assert stored.digest == key_digest(key) and key not in str(vars(stored))
    assert stored.prefix == key[:10] and stored.name == "Open WebUI"
    assert api_key_authenticate(key=key) == stored
    assert api_key_authenticate(key=key, username="alice") == stored
    assert api_key_authenticate(key=key, username="bob") is None
    assert api_key_authenticate(key=key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert api_key_authenticate(key="") is None


def test_a_revoked_key_or_an_inactive_user_is_refused(alice):
    api_key, key = api_key_create(owner=alice)
    api_key_revoke(api_key=api_key)
    assert api_key_authenticate(key=key) is None

    _, other = api_key_create(owner=alice)
    alice.is_active = False
    alice.save()
    assert api_key_authenticate(key=other) is None


def test_the_page_makes_a_key_then_redirects_and_shows_it_once_and_lists_it_without_it(client, alice):
    client.force_login(alice)

    made = client.post(reverse("api_keys"), {"name": "laptop"})

    # Post/redirect/get: reloading the page it lands on makes no second key.
    assert made.status_code == 302 and made["Location"] == reverse("api_keys")
    shown = client.get(reverse("api_keys"))
    assert shown["Cache-Control"] == "no-store"
    key = KEY.search(shown.content.decode()).group()
    assert ApiKey.objects.get(owner=alice).digest == key_digest(key)
    listed = client.get(reverse("api_keys")).content.decode()
    assert "laptop" in listed and key[:10] in listed and key not in listed
    assert ApiKey.objects.filter(owner=alice).count() == 1


def test_the_new_key_is_shown_only_to_the_session_that_made_it(client, alice):
    client.force_login(alice)
    client.post(reverse("api_keys"), {"name": "laptop"})
    other = Client()
    other.force_login(alice)

    assert not KEY.search(other.get(reverse("api_keys")).content.decode())
    assert KEY.search(client.get(reverse("api_keys")).content.decode())


def _pasted(page: str, element_id: str) -> str:
    """The text a Copy button copies: the element's text, as the browser reads it."""
    found = re.search(rf'id="{element_id}"[^>]*>(?:<code>)?(.*?)(?:</code>)?</(?:pre|code)>', page, re.S)
    return html.unescape(found.group(1))


def test_the_pages_settings_name_this_server_and_the_new_key(client, settings, alice):
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "images.example.org"]
    client.force_login(alice)
    client.post(reverse("api_keys"), {"name": "laptop"}, HTTP_HOST="images.example.org:8443", secure=True)

    page = client.get(reverse("api_keys"), HTTP_HOST="images.example.org:8443", secure=True).content.decode()

    key = KEY.search(page).group()
    server = "https://images.example.org:8443"
    curl = _pasted(page, "snippet-curl")
    assert curl.startswith(f"curl {server}/v1/images/generations \\\n")
    assert f'-H "Authorization: Bearer {key}"' in curl
    assert f'OpenAI(\n    base_url="{server}/v1",\n    api_key="{key}",\n)' in _pasted(page, "snippet-openai")
    webui = _pasted(page, "snippet-webuiapi")
    assert 'host="images.example.org", port=8443, use_https=True' in webui
    assert f'username="alice", password="{key}",' in webui
    assert _pasted(page, "owui-openai-url") == f"{server}/v1"
    assert _pasted(page, "owui-openai-key") == key
    assert _pasted(page, "owui-a1111-url") == server
    assert _pasted(page, "owui-a1111-auth") == f"alice:{key}"
    # Without a new key, a placeholder stands in for it.
    again = client.get(reverse("api_keys"), HTTP_HOST="images.example.org:8443", secure=True).content.decode()
    assert not KEY.search(again) and 'api_key="YOUR_KEY",' in _pasted(again, "snippet-openai")


def test_the_page_revokes_only_the_users_own_keys(client, alice, bob):
    alice_key, _ = api_key_create(owner=alice)
    bob_key, _ = api_key_create(owner=bob)
    client.force_login(alice)

    assert client.post(reverse("api_key_revoke", args=[bob_key.pk])).status_code == 404
    assert client.post(reverse("api_key_revoke", args=[alice_key.pk])).status_code == 302

    alice_key.refresh_from_db()
    bob_key.refresh_from_db()
    assert alice_key.revoked_at is not None and bob_key.revoked_at is None
    assert client.get(reverse("api_keys")).status_code == 200


def test_the_page_refuses_an_over_long_name(client, alice):
    client.force_login(alice)

    response = client.post(reverse("api_keys"), {"name": "x" * 101})

    assert response.status_code == 400 and not ApiKey.objects.exists()


def test_the_page_needs_a_login(client):
    response = client.get(reverse("api_keys"))
    assert response.status_code == 302 and "/login/" in response["Location"]


@pytest.fixture
def admin_client(client):
    root = make_user("root")
    root.is_staff = root.is_superuser = True
    root.save()
    client.force_login(root)
    return client


def test_the_admin_makes_a_key_for_a_user_and_shows_it_once(admin_client, alice):
    response = admin_client.post(reverse("admin:generation_apikey_add"), {"owner": alice.pk, "name": "script"})

    assert response.status_code == 200
    key = KEY.search(response.content.decode()).group()
    api_key = ApiKey.objects.get()
    assert (api_key.owner, api_key.name, api_key.digest) == (alice, "script", key_digest(key))
    listing = admin_client.get(reverse("admin:generation_apikey_changelist")).content.decode()
    assert api_key.prefix in listing and key not in listing
    detail = admin_client.get(reverse("admin:generation_apikey_change", args=[api_key.pk])).content.decode()
    assert key not in detail and api_key.digest not in detail


def test_the_admin_revokes_keys(admin_client, alice):
    api_key, key = api_key_create(owner=alice)

    admin_client.post(
        reverse("admin:generation_apikey_changelist"),
        {"action": "revoke_keys", "_selected_action": [api_key.pk]},
        follow=True,
    )

    assert api_key_authenticate(key=key) is None


def _command(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("api_key", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_the_command_creates_lists_and_revokes_keys(alice):
    printed, note = _command("create", "alice", "--name", "cron")
    key = printed.strip()
    assert KEY.fullmatch(key) and "only this once" in note
    api_key = ApiKey.objects.get()

    listed, _ = _command("list")
    assert "alice" in listed and "cron" in listed and api_key.prefix in listed and key not in listed

    _command("revoke", api_key.prefix)
    assert api_key_authenticate(key=key) is None
    assert "revoked" in _command("list", "alice")[0]


def test_the_command_refuses_unknown_users_and_keys(alice):
    with pytest.raises(CommandError, match="No user"):
        _command("create", "nobody")
    with pytest.raises(CommandError, match="No key"):
        _command("revoke", "ig_missing")
