import threading

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from chat.models import Message
from chat.services import exchange_post, message_update


@pytest.fixture
def message(alice_chat):
    _, reply = exchange_post(
        conversation=alice_chat,
        prompt="a lighthouse",
        reply="Queued",
        reply_metadata={"status": "queued", "params": {"steps": 20, "size": {"w": 512, "h": 512}}, "tags": ["a"]},
    )
    return reply


def test_it_keeps_keys_the_update_does_not_name(message):
    message_update(message.pk, metadata={"progress": 10})
    message.refresh_from_db()
    assert message.metadata["status"] == "queued"
    assert message.metadata["params"] == {"steps": 20, "size": {"w": 512, "h": 512}}
    assert message.metadata["progress"] == 10


def test_it_merges_nested_dicts_and_replaces_other_values(message):
    message_update(message.pk, metadata={"params": {"size": {"w": 768}, "seed": 7}, "tags": ["b"], "status": "done"})
    message.refresh_from_db()
    assert message.metadata == {
        "status": "done",
        "params": {"steps": 20, "size": {"w": 768, "h": 512}, "seed": 7},
        "tags": ["b"],
    }


def test_a_dict_replaces_a_non_dict_value(message):
    message_update(message.pk, metadata={"status": {"code": "x"}})
    message.refresh_from_db()
    assert message.metadata["status"] == {"code": "x"}


@pytest.mark.parametrize("metadata", [None, {}])
def test_empty_or_missing_metadata_changes_nothing(message, metadata):
    before = dict(message.metadata)
    message_update(message.pk, metadata=metadata)
    message.refresh_from_db()
    assert message.metadata == before


def test_it_fills_a_message_that_had_no_metadata(alice_chat):
    message, _ = exchange_post(conversation=alice_chat, prompt="hi", reply="", reply_metadata={})
    message_update(message.pk, metadata={"a": {"b": 1}})
    message.refresh_from_db()
    assert message.metadata == {"a": {"b": 1}}


def test_content_only_update_keeps_metadata_and_moves_updated_at(message):
    before = message.updated_at
    message_update(message.pk, content="Your image is ready.")
    message.refresh_from_db()
    assert message.content == "Your image is ready."
    assert message.metadata["status"] == "queued"
    assert message.updated_at > before


def test_metadata_only_update_keeps_content(message):
    message_update(message.pk, metadata={"progress": 50})
    message.refresh_from_db()
    assert message.content == "Queued"


@pytest.mark.parametrize("bad", [["a list"], "text", {"x": float("nan")}, {"x": object()}])
def test_it_rejects_metadata_that_is_not_a_json_object_and_changes_nothing(message, bad):
    before = dict(message.metadata)
    with pytest.raises(ValidationError):
        message_update(message.pk, metadata=bad)
    message.refresh_from_db()
    assert message.metadata == before


def test_an_unknown_message_raises(db):
    with pytest.raises(Message.DoesNotExist):
        message_update(999_999, metadata={"a": 1})


THREADS = 8
KEYS_PER_THREAD = 100


@pytest.mark.django_db(transaction=True)
def test_concurrent_merges_from_many_connections_lose_no_key(alice_chat):
    """8 threads, each with its own connection, merge 100 keys each into one message."""
    _, message = exchange_post(
        conversation=alice_chat, prompt="shared", reply="", reply_metadata={"shared": {"origin": True}}
    )
    barrier = threading.Barrier(THREADS)
    failures: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for i in range(KEYS_PER_THREAD):
                if i % 4 == 0:
                    update = {"shared": {f"t{n}-{i}": i}}
                else:
                    update = {f"t{n}-{i}": {"thread": n, "i": i}}
                message_update(message.pk, metadata=update)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)

    assert not failures, failures
    message.refresh_from_db()
    top_level = {key for key in message.metadata if key != "shared"}
    nested = set(message.metadata["shared"]) - {"origin"}
    expected_nested = {f"t{n}-{i}" for n in range(THREADS) for i in range(0, KEYS_PER_THREAD, 4)}
    expected_top = {f"t{n}-{i}" for n in range(THREADS) for i in range(KEYS_PER_THREAD) if i % 4}
    assert nested == expected_nested
    assert top_level == expected_top
    assert len(nested) + len(top_level) == THREADS * KEYS_PER_THREAD
    assert message.metadata["shared"]["origin"] is True
