import pytest
from django.urls import reverse

from chat.models import Conversation
from chat.services import conversation_create
from generation.models import ImageJob


def test_the_login_page_is_served(client):
    response = client.get(reverse("login"))
    assert response.status_code == 200
    assert b'name="username"' in response.content


@pytest.mark.parametrize("name", ["chat:home"])
def test_anonymous_visitors_are_sent_to_login(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_a_user_logs_in_and_sees_only_their_own_conversations(client, alice, bob):
    conversation_create(owner=alice, title="Alice's castles")
    conversation_create(owner=bob, title="Bob's boats")

    response = client.post(reverse("login"), {"username": "alice", "password": "alice-secret-pw"}, follow=True)

    assert response.status_code == 200
    assert b"Alice&#x27;s castles" in response.content
    assert b"Bob" not in response.content.replace(b"bob", b"")


def test_a_new_user_sees_an_empty_state(client, alice):
    client.force_login(alice)
    response = client.get(reverse("chat:home"))
    assert b"No conversations yet" in response.content


def test_a_user_starts_a_conversation(client, alice):
    client.force_login(alice)
    response = client.post(reverse("chat:conversation_new"))
    conversation = Conversation.objects.get(owner=alice)
    assert response.url == reverse("chat:conversation", args=[conversation.pk])
    assert client.get(response.url).status_code == 200


def test_another_users_conversation_answers_404(client, bob, alice_chat):
    client.force_login(bob)
    assert client.get(reverse("chat:conversation", args=[alice_chat.pk])).status_code == 404
    response = client.post(reverse("chat:job_submit", args=[alice_chat.pk]), {"prompt": "sneaky"})
    assert response.status_code == 404
    assert not ImageJob.objects.exists()


def test_submitting_a_prompt_queues_a_job_and_shows_its_card(client, alice, alice_chat):
    client.force_login(alice)
    url = reverse("chat:job_submit", args=[alice_chat.pk])
    response = client.post(url, {"prompt": "a green comet", "steps": "8", "width": "256", "height": "256"}, follow=True)
    job = ImageJob.objects.get()
    assert (job.prompt, job.steps, job.width) == ("a green comet", 8, 256)
    assert b"Position: 1" in response.content
    assert b"demo</strong> model has random weights" in response.content


def test_bad_input_shows_field_errors_and_creates_nothing(client, alice, alice_chat):
    client.force_login(alice)
    url = reverse("chat:job_submit", args=[alice_chat.pk])
    response = client.post(url, {"prompt": "  ", "steps": "500", "width": "100"})
    assert response.status_code == 400
    body = response.content.decode()
    assert "Please describe the image you want." in body
    assert "Steps: 1-100." in body
    assert "Width: 64-1024, a multiple of 8." in body
    assert not ImageJob.objects.exists()


@pytest.mark.parametrize("url", ["/no-such-page/", "/conversations/999999/"])
def test_a_missing_page_is_styled_and_leads_back(client, alice, url):
    client.force_login(alice)
    response = client.get(url)
    assert response.status_code == 404
    body = response.content.decode()
    assert "Page not found" in body and 'href="/"' in body and "Back to your conversations" in body
    assert "css/site.css" in body


def test_the_server_error_page_renders_without_a_request_context():
    from django.template.loader import render_to_string

    body = render_to_string("500.html")
    assert "Something went wrong" in body and "Back to your conversations" in body
