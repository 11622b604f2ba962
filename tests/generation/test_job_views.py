from django.urls import reverse

from generation.models import ImageJob
from tests.fakes import FakeGenerator
from tests.helpers import run_pass


def test_the_owner_downloads_the_finished_image(client, alice, submit, runner_for):
    job = submit("a kite")
    run_pass(runner_for(FakeGenerator()))
    client.force_login(alice)

    response = client.get(reverse("generation:job_image", args=[job.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content).startswith(b"\x89PNG")

    download = client.get(reverse("generation:job_image", args=[job.pk]) + "?download=1")
    assert "attachment" in download["Content-Disposition"]


def test_images_are_marked_private_so_no_shared_cache_keeps_them(client, alice, submit, runner_for):
    job = submit("a kite")
    run_pass(runner_for(FakeGenerator()))
    client.force_login(alice)
    response = client.get(reverse("generation:job_image", args=[job.pk]))
    assert response.status_code == 200
    assert "private" in response["Cache-Control"].split(", ")


def test_another_user_gets_404_for_the_image_and_the_cancel(client, bob, submit, runner_for):
    done, waiting = submit("mine"), None
    run_pass(runner_for(FakeGenerator()))
    waiting = submit("also mine")
    client.force_login(bob)
    assert client.get(reverse("generation:job_image", args=[done.pk])).status_code == 404
    assert client.post(reverse("generation:job_cancel", args=[waiting.pk])).status_code == 404
    assert ImageJob.objects.get(pk=waiting.pk).status == "queued"


def test_anonymous_requests_go_to_login(client, submit):
    job = submit("a kite")
    response = client.get(reverse("generation:job_image", args=[job.pk]))
    assert response.status_code == 302 and "/login/" in response.url


def test_an_unfinished_job_has_no_image(client, alice, submit):
    job = submit("not yet")
    client.force_login(alice)
    assert client.get(reverse("generation:job_image", args=[job.pk])).status_code == 404


def test_the_owner_cancels_a_queued_job_from_the_page(client, alice, submit):
    job = submit("never mind")
    client.force_login(alice)
    response = client.post(reverse("generation:job_cancel", args=[job.pk]), follow=True)
    assert ImageJob.objects.get(pk=job.pk).status == "cancelled"
    assert b"No image was made." in response.content
    again = client.post(reverse("generation:job_cancel", args=[job.pk]), follow=True)
    assert b"already cancelled" in again.content


def test_cancel_needs_a_post(client, alice, submit):
    job = submit("x")
    client.force_login(alice)
    assert client.get(reverse("generation:job_cancel", args=[job.pk])).status_code == 405


def test_the_card_endpoint_renders_the_owners_card_with_position_and_eta(client, alice, bob, submit):
    submit("ahead")
    job = submit("mine")
    client.force_login(alice)
    body = client.get(reverse("generation:job_card", args=[job.pk])).content.decode()
    assert f'id="job-{job.pk}"' in body
    assert "Position: 2" in body
    assert "Starts in" in body and "ready in" in body
    client.force_login(bob)
    assert client.get(reverse("generation:job_card", args=[job.pk])).status_code == 404
