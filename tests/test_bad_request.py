"""A body Django cannot decode answers 400 with a clear page, never 500."""

import pytest
from django.test import Client
from django.urls import reverse

from chat.models import Conversation

FORM = "application/x-www-form-urlencoded; charset={}"


def _csrf_client() -> tuple[Client, str]:
    # CSRF checks on, as in production: the check is what reads the body first.
    client = Client(enforce_csrf_checks=True)
    client.get(reverse("login"))
    return client, client.cookies["csrftoken"].value


@pytest.mark.django_db
@pytest.mark.parametrize("charset", ["latin-1", "utf-16"])
def test_an_anonymous_login_form_in_another_charset_answers_400(charset):
    client, token = _csrf_client()
    body = f"username=alice&password=x&csrfmiddlewaretoken={token}".encode()
    response = client.generic("POST", reverse("login"), body, content_type=FORM.format(charset))
    assert response.status_code == 400
    assert f"Forms must be sent as UTF-8, not {charset}." in response.content.decode()


def test_a_logged_in_form_in_another_charset_answers_400_and_changes_nothing(alice, alice_chat):
    client, token = _csrf_client()
    client.force_login(alice)
    client.get(reverse("chat:home"))
    token = client.cookies["csrftoken"].value
    url = reverse("chat:conversation_rename", args=[alice_chat.pk])
    body = f"title=Ch\xe2teaux&csrfmiddlewaretoken={token}".encode("latin-1")
    response = client.generic("POST", url, body, content_type=FORM.format("iso-8859-1"))
    assert response.status_code == 400
    assert "Forms must be sent as UTF-8" in response.content.decode()
    assert Conversation.objects.get().title == "Alice's pictures"
