"""Property tests: whatever arrives, never a 500 and never a half-made job."""

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat.models import Message
from generation import events
from generation.consumers import SYNC, parse_client_message
from generation.models import ImageJob
from generation.services import job_submit

FIELDS = ["negative_prompt", "model", "width", "height", "steps", "guidance", "seed", "scheduler"]
ANY_VALUE = st.one_of(
    st.none(),
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=3000),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.binary(max_size=10),
    st.sampled_from(["512", "64", "0", "-1", "1e9", "demo", "euler", " 8 ", "4294967295", "4294967296"]),
)
PARAMS = st.fixed_dictionaries({}, optional={name: ANY_VALUE for name in FIELDS})
FORM_VALUE = st.one_of(
    st.text(max_size=2100), st.sampled_from(["512", "20", "7.5", "nan", "inf", "", "demo", "1" * 40])
)
FORM = st.fixed_dictionaries({}, optional={name: FORM_VALUE for name in ["prompt", *FIELDS, "unexpected"]})
SETTINGS = hypothesis_settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _counts():
    return ImageJob.objects.count(), Message.objects.count()


@pytest.fixture
def no_caps(settings):
    settings.IMAGEGEN_MAX_PENDING_PER_USER = 10_000
    settings.IMAGEGEN_SUBMISSIONS_PER_MINUTE = 10_000


@SETTINGS
@given(prompt=ANY_VALUE, params=PARAMS)
def test_job_submit_either_creates_everything_or_nothing(no_caps, alice, alice_chat, prompt, params):
    jobs, messages = _counts()
    try:
        job = job_submit(user=alice, conversation=alice_chat, prompt=prompt, **params).jobs[0]
    except ValidationError as exc:
        assert exc.messages, "a clear message"
        assert _counts() == (jobs, messages)
    else:
        assert _counts() == (jobs + 1, messages + 2)
        assert 1 <= len(job.prompt) <= 2000 and job.prompt == job.prompt.strip()
        assert job.width % 8 == 0 and 64 <= job.width <= 1024
        assert 0 <= job.seed <= 2**32 - 1 and 1 <= job.steps <= 100 and 0 <= job.guidance <= 30


@SETTINGS
@given(data=FORM)
def test_the_submit_endpoint_never_answers_500_nor_leaves_a_partial_row(no_caps, client, alice, alice_chat, data):
    client.force_login(alice)
    jobs, messages = _counts()
    response = client.post(reverse("chat:job_submit", args=[alice_chat.pk]), data, HTTP_X_REQUESTED_WITH="fetch")
    assert response.status_code in (201, 400)
    if response.status_code == 201:
        assert _counts() == (jobs + 1, messages + 2)
    else:
        assert _counts() == (jobs, messages)
        assert b"errorlist" in response.content


@hypothesis_settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.none(), st.text(max_size=2000)), data=st.one_of(st.none(), st.binary(max_size=50)))
def test_the_websocket_receive_path_answers_any_frame_with_sync_or_a_valid_error_event(text, data):
    parsed = parse_client_message(text, data)
    if parsed != SYNC:
        assert parsed == events.build_event("error", message=parsed["message"])
        assert parsed["message"]
