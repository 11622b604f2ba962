import pytest
from django.contrib.auth import get_user_model

from chat.services import conversation_create


@pytest.fixture(autouse=True)
def _private_dirs(settings, tmp_path):
    """Images and device locks go to a fresh folder per test."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.IMAGEGEN_LOCK_DIR = tmp_path / "locks"


def make_user(username: str):
    return get_user_model().objects.create_user(username=username, password=f"{username}-secret-pw")


@pytest.fixture
def alice(db):
    return make_user("alice")


@pytest.fixture
def bob(db):
    return make_user("bob")


@pytest.fixture
def alice_chat(alice):
    return conversation_create(owner=alice, title="Alice's pictures")


@pytest.fixture
def bob_chat(bob):
    return conversation_create(owner=bob, title="Bob's pictures")
