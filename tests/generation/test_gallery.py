"""The "My images" gallery: the user's own images, newest first, each linking back."""

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from generation.models import ImageJob
from generation.views import GALLERY_PAGE_SIZE
from tests.fakes import FakeGenerator
from tests.helpers import run_pass


def _finish(submit, runner_for, *prompts, conversation=None):
    runner = runner_for(FakeGenerator())
    jobs = []
    for prompt in prompts:
        jobs.append(submit(prompt, conversation=conversation))
        run_pass(runner)
    return [ImageJob.objects.get(pk=job.pk) for job in jobs]


def test_it_lists_the_users_images_newest_first_with_a_link_to_each_message(client, alice, submit, runner_for):
    first, second = _finish(submit, runner_for, "a comet", "a harbour")
    client.force_login(alice)
    body = client.get(reverse("gallery")).content.decode()
    assert body.index("a harbour") < body.index("a comet")
    link = reverse("chat:conversation", args=[first.conversation_id]) + f"#message-{first.message_id}"
    assert link in body
    assert reverse("generation:job_image", args=[second.pk]) in body


def test_another_users_images_are_not_listed_and_answer_404(client, bob, bob_chat, submit, runner_for):
    (alices,) = _finish(submit, runner_for, "alice's secret garden")
    _finish(submit, runner_for, "bob's boat", conversation=bob_chat)
    client.force_login(bob)
    body = client.get(reverse("gallery")).content.decode()
    assert "bob&#x27;s boat" in body
    assert "secret garden" not in body
    assert client.get(reverse("generation:job_image", args=[alices.pk])).status_code == 404


def test_unfinished_jobs_are_not_in_the_gallery(client, alice, submit):
    submit("still waiting")
    client.force_login(alice)
    body = client.get(reverse("gallery")).content.decode()
    assert "No images yet" in body and "still waiting" not in body


def test_the_gallery_needs_a_login(client):
    response = client.get(reverse("gallery"))
    assert response.status_code == 302 and "/login/" in response.url


def test_the_gallery_is_paged(client, settings, alice, submit, runner_for):
    settings.IMAGEGEN_SUBMISSIONS_PER_MINUTE = 1000
    _finish(submit, runner_for, *[f"picture {n}" for n in range(GALLERY_PAGE_SIZE + 2)])
    client.force_login(alice)
    first = client.get(reverse("gallery")).content.decode()
    assert first.count('data-testid="gallery-item"') == GALLERY_PAGE_SIZE
    assert "Page 1 of 2" in first
    second = client.get(reverse("gallery") + "?page=2").content.decode()
    assert second.count('data-testid="gallery-item"') == 2
    assert ">picture 0<" in second and ">picture 2<" not in second


def _queries(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("gallery")).status_code == 200
    return len(queries)


def test_the_gallery_makes_the_same_number_of_queries_however_many_images(client, settings, alice, submit, runner_for):
    settings.IMAGEGEN_SUBMISSIONS_PER_MINUTE = 1000
    client.force_login(alice)
    _finish(submit, runner_for, "one", "two")
    few = _queries(client)
    _finish(submit, runner_for, *[f"more {n}" for n in range(10)])
    assert _queries(client) == few
