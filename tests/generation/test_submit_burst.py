"""A burst of concurrent submissions to the real web server: more requests at once than
PostgreSQL accepts connections, so the web process must share a pool of them."""

import threading
from collections import Counter

import pytest
import requests
from django.test import Client

from chat.services import conversation_create
from generation.models import ImageJob
from generation.selectors import queue_positions
from tests.conftest import make_user
from tests.helpers import LAYER_DATABASES, start_web, stop

USERS = 15
PER_USER = 10  # the pending-jobs cap
pytestmark = [pytest.mark.configured_layer, pytest.mark.django_db(transaction=True, databases=LAYER_DATABASES)]


def _logged_in(base: str, user) -> tuple[requests.Session, str]:
    client = Client()
    client.force_login(user)
    session = requests.Session()
    session.cookies.set("sessionid", client.cookies["sessionid"].value)
    session.get(f"{base}/", timeout=30).raise_for_status()
    return session, session.cookies["csrftoken"]


def test_150_simultaneous_submissions_are_all_queued_with_unique_positions(tmp_path):
    users = [make_user(f"burst{n}") for n in range(USERS)]
    chats = {user.pk: conversation_create(owner=user, title="burst").pk for user in users}
    web, base = start_web(tmp_path, tmp_path / "web.log", LOG_LEVEL="WARNING")
    try:
        sessions = [(user, *_logged_in(base, user)) for user in users]
        requests_total = USERS * PER_USER
        barrier = threading.Barrier(requests_total)
        statuses: list[int] = []

        def submit(n: int) -> None:
            user, session, token = sessions[n % USERS]
            barrier.wait()
            response = session.post(
                f"{base}/conversations/{chats[user.pk]}/submit/",
                data={"prompt": f"burst {n}", "steps": "4", "width": "64", "height": "64"},
                headers={"X-CSRFToken": token, "X-Requested-With": "fetch"},
                timeout=120,
            )
            statuses.append(response.status_code)

        threads = [threading.Thread(target=submit, args=(n,)) for n in range(requests_total)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stop(web)

    assert Counter(statuses) == {201: requests_total}, (tmp_path / "web.log").read_text()[-3000:]
    assert ImageJob.objects.count() == requests_total
    assert sorted(queue_positions().values()) == list(range(1, requests_total + 1))
    per_user = Counter(ImageJob.objects.values_list("owner_id", flat=True))
    assert set(per_user.values()) == {PER_USER}
