"""Every page and action: anonymous visitors go to login, another user's object is a 404."""

import pytest
from django.urls import reverse

from generation.models import ImageJob
from tests.fakes import FakeGenerator
from tests.helpers import run_pass

# (url name, method, needs) - needs: which of alice's objects the URL takes.
ENDPOINTS = [
    ("chat:conversation", "get", "conversation"),
    ("chat:conversation_rename", "post", "conversation"),
    ("chat:conversation_delete", "post", "conversation"),
    ("chat:job_submit", "post", "conversation"),
    ("generation:job_image", "get", "done_job"),
    ("generation:job_source", "get", "edit_job"),
    ("generation:job_card", "get", "job"),
    ("generation:job_cancel", "post", "job"),
    ("generation:job_retry", "post", "failed_job"),
]


@pytest.fixture
def alices_things(alice_chat, submit, runner_for):
    done = submit("done")
    run_pass(runner_for(FakeGenerator()))
    failed = submit("failed")
    run_pass(runner_for(FakeGenerator(failures=[RuntimeError("x")])))
    waiting = submit("waiting")
    edit = submit("an edit of it", source_job=done.pk)
    return {
        "conversation": alice_chat.pk,
        "done_job": done.pk,
        "failed_job": failed.pk,
        "job": waiting.pk,
        "edit_job": edit.pk,
    }


def _states():
    return sorted(ImageJob.objects.values_list("pk", "status"))


def test_the_list_covers_every_url_that_takes_an_object():
    from chat import urls as chat_urls
    from generation import urls as generation_urls

    names = {f"{module.app_name}:{p.name}" for module in (chat_urls, generation_urls) for p in module.urlpatterns}
    with_args = {name for name in names if "<" in str(_pattern(name))}
    assert with_args == {name for name, _, _ in ENDPOINTS}


def _pattern(name):
    from chat import urls as chat_urls
    from generation import urls as generation_urls

    app, _, short = name.partition(":")
    module = {"chat": chat_urls, "generation": generation_urls}[app]
    return next(p.pattern for p in module.urlpatterns if p.name == short)


@pytest.mark.parametrize("name,method,needs", ENDPOINTS)
def test_anonymous_requests_go_to_login_and_change_nothing(client, alices_things, name, method, needs):
    before = _states()
    response = getattr(client, method)(reverse(name, args=[alices_things[needs]]), {"prompt": "x", "title": "x"})
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))
    assert _states() == before


@pytest.mark.parametrize("name,method,needs", ENDPOINTS)
def test_another_users_object_answers_404_and_changes_nothing(client, bob, alices_things, name, method, needs):
    client.force_login(bob)
    before = _states()
    response = getattr(client, method)(reverse(name, args=[alices_things[needs]]), {"prompt": "x", "title": "x"})
    assert response.status_code == 404
    assert _states() == before


@pytest.mark.parametrize("name,method,needs", ENDPOINTS)
def test_the_owner_is_allowed(client, alice, alices_things, name, method, needs):
    client.force_login(alice)
    response = getattr(client, method)(reverse(name, args=[alices_things[needs]]), {"prompt": "x", "title": "x"})
    assert response.status_code in (200, 201, 302)


def test_the_home_page_needs_a_login(client):
    assert client.get(reverse("chat:home")).status_code == 302


def test_admin_is_for_staff_only(client, alice):
    client.force_login(alice)
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response.url
    alice.is_staff = True
    alice.save()
    assert client.get("/admin/").status_code == 200


def test_forms_need_a_csrf_token(alice, alice_chat):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(reverse("chat:job_submit", args=[alice_chat.pk]), {"prompt": "no token"})
    assert response.status_code == 403
    assert not ImageJob.objects.exists()
