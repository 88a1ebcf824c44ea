"""The store writes' decisions, without a backend: both stores write what these return."""

import pytest

from replies_engine import clock, decisions
from replies_engine.conversation import PROCESSING_ERROR, PROCESSING_REPLY, PROCESSING_TIMEOUT
from replies_engine.decisions import MAX_MESSAGES_PER_BATCH
from replies_engine.ports import StoreError

NOW = 1_800_000_000.0


def at(seconds: float) -> str:
    return clock.iso(NOW + seconds)


def message(message_id: str, seconds: float = 0, **fields) -> dict:
    return {"message_id": message_id, "role": "user", "timestamp": at(seconds), **fields}


def locked_by(batch_id: str, seconds_ago: float = 0) -> dict:
    return {
        "conversation_status": PROCESSING_REPLY,
        "lock_owner": batch_id,
        "processing_started_at": at(-seconds_ago),
        "sending": {},
    }


def test_lock_appends_what_is_new_and_takes_the_lock():
    record = {"conversation_status": "ai_response_sent", "last_inbound_at": at(5)}

    write = decisions.lock(
        record,
        [{"message_id": "SMa"}],
        "b1",
        [message("SMa"), message("SMb", 2), message("SMb", 3)],
        now=NOW + 4,
        lock_timeout_seconds=60,
    )

    assert write.status == "acquired" and write.duplicates == ["SMa", "SMb"]
    assert [m["message_id"] for m in write.append] == ["SMb"]
    assert write.changes["lock_owner"] == "b1" and write.changes["conversation_status"] == PROCESSING_REPLY
    assert write.changes["last_user_message_at"] == at(2)
    assert write.changes["last_inbound_at"] == at(5)  # moves only forward
    assert write.outcome({"x": 1}).record == {"x": 1}


def test_lock_refuses_a_live_lock_takes_an_expired_one_and_writes_no_duplicates():
    live = decisions.lock(locked_by("b0", 10), [], "b1", [message("SMa")], now=NOW, lock_timeout_seconds=60)
    expired = decisions.lock(
        locked_by("b0", 61), [], "b1", [message("SMa")], now=NOW, lock_timeout_seconds=60
    )
    nothing_new = decisions.lock(
        {}, [{"message_id": "SMa"}], "b1", [message("SMa")], now=NOW, lock_timeout_seconds=60
    )

    assert (live.status, live.lock_owner, live.writes) == ("locked", "b0", False)
    assert expired.status == "acquired"
    assert (nothing_new.status, nothing_new.writes, nothing_new.duplicates) == ("duplicates", False, ["SMa"])


def test_one_batch_size_for_both_stores():
    many = [message(f"SM{n}") for n in range(MAX_MESSAGES_PER_BATCH + 1)]

    with pytest.raises(StoreError, match="at most 99"):
        decisions.lock({}, [], "b1", many, now=NOW, lock_timeout_seconds=60)
    with pytest.raises(StoreError, match="at most 99"):
        decisions.add_pending({}, [], many, now=NOW)


def test_add_pending_skips_what_waits_or_is_stored_and_counts_the_version():
    record = {"pending_messages": [message("SMa")], "pending_version": 3}

    write = decisions.add_pending(
        record, [{"message_id": "SMb"}], [message("SMa"), message("SMb"), message("SMc")], now=NOW
    )

    assert write.status == "added" and write.duplicates == ["SMa", "SMb"]
    assert [m["message_id"] for m in write.changes["pending_messages"]] == ["SMa", "SMc"]
    assert write.changes["pending_version"] == 4
    assert decisions.add_pending(record, [], [message("SMa")], now=NOW).writes is False


def test_the_flush_moves_readable_pending_messages_in_arrival_order_at_most_a_batch():
    record = {
        "pending_version": 7,
        "pending_messages": [
            message("SMc", 2),
            message("SMa", 0),
            {"message_id": "SMold", "timestamp": "yesterday"},  # dead-lettered by stage 2: left out
            message("SMb", 1),
        ],
    }

    write = decisions.flush(
        record,
        [{"message_id": "SMb"}],
        "b1",
        pending_version=7,
        now=NOW + 5,
        lock_timeout_seconds=60,
        held=False,
    )

    assert write.status == "acquired" and write.duplicates == ["SMb"]
    assert [(m["message_id"], m["batch_id"]) for m in write.append] == [("SMa", "b1"), ("SMc", "b1")]
    assert write.changes["pending_messages"] == [] and write.changes["pending_version"] == 8

    many = {
        "pending_version": 1,
        "pending_messages": [message(f"SM{n:03}", n) for n in range(MAX_MESSAGES_PER_BATCH + 2)],
    }
    write = decisions.flush(many, [], "b1", pending_version=1, now=NOW, lock_timeout_seconds=60, held=False)
    assert len(write.append) == MAX_MESSAGES_PER_BATCH
    assert [(m["message_id"], m["batch_id"]) for m in write.changes["pending_messages"]] == [
        ("SM099", None),
        ("SM100", None),
    ]


def test_the_flush_is_refused_when_pending_changed_or_the_lock_is_not_as_asked():
    pending = {"pending_version": 2, "pending_messages": [message("SMa")]}
    args = dict(now=NOW, lock_timeout_seconds=60)

    assert decisions.flush(pending, [], "b1", pending_version=1, held=False, **args).status == "changed"
    assert (
        decisions.flush(
            {**pending, **locked_by("b0")}, [], "b1", pending_version=2, held=False, **args
        ).status
        == "locked"
    )
    assert decisions.flush(pending, [], "b1", pending_version=2, held=True, **args).status == "locked"
    held = decisions.flush({**pending, **locked_by("b1")}, [], "b1", pending_version=2, held=True, **args)
    assert held.status == "acquired"
    stored_already = decisions.flush(
        pending, [{"message_id": "SMa"}], "b1", pending_version=2, held=False, **args
    )
    assert (stored_already.status, stored_already.writes) == ("duplicates", True)  # pending emptied


def test_an_emergency_unlock_puts_the_batch_back_first_in_debounce():
    record = {**locked_by("b1"), "pending_messages": [message("SMz", 9)], "pending_version": 4}
    batch = [message("SMa", 0, batch_id="b1"), message("SMb", 1, batch_id="b1")]

    delay = decisions.emergency_unlock(record, batch, reason="queue down", now=NOW, to_pending=False)
    debounce = decisions.emergency_unlock(record, batch, reason="queue down", now=NOW, to_pending=True)

    assert delay == {"conversation_status": PROCESSING_ERROR, "last_error": "queue down", "updated_at": at(0)}
    assert [(m["message_id"], m.get("batch_id")) for m in debounce["pending_messages"]] == [
        ("SMa", None),
        ("SMb", None),
        ("SMz", None),
    ]
    assert debounce["pending_version"] == 5


def test_release_renew_and_reset_set_the_times():
    assert decisions.release("ai_response_sent", NOW, {"x": 1}) == {
        "x": 1,
        "conversation_status": "ai_response_sent",
        "processing_completed_at": at(0),
        "updated_at": at(0),
    }
    assert decisions.renew(NOW, {"sending": {"a": 1}}) == {
        "sending": {"a": 1},
        "processing_started_at": at(0),
        "updated_at": at(0),
    }
    assert decisions.reset_stalled(NOW)["conversation_status"] == PROCESSING_TIMEOUT


def test_a_refused_message_is_noted_once():
    record = {"refused_messages": [message("SMa")]}

    assert decisions.refuse(record, message("SMa")) is None
    assert [m["message_id"] for m in decisions.refuse(record, message("SMb"))["refused_messages"]] == [
        "SMa",
        "SMb",
    ]


def test_delivery_statuses_only_move_forward_and_a_final_one_ends_it():
    assert decisions.delivery({"delivery_status": "sent"}, "delivered", None, NOW) == {
        "delivery_status": "delivered",
        "delivery_updated_at": at(0),
    }
    assert decisions.delivery({"delivery_status": "delivered"}, "sent", None, NOW) is None
    assert (
        decisions.delivery({"delivery_status": "sent"}, "undelivered", "30003", NOW)["delivery_error_code"]
        == "30003"
    )
    assert decisions.delivery({"delivery_status": "failed"}, "delivered", None, NOW) is None


def test_only_replies_are_indexed_for_status_callbacks():
    assert decisions.indexed({"role": "agent"}) and not decisions.indexed({"role": "user"})


def test_the_batching_mode_is_one_object_and_a_setting_of_the_other_mode_is_refused_or_warned(caplog):
    from replies_engine.batching_modes import Debounce, Delay
    from replies_engine.config import ConfigurationError, Settings

    delay = Settings.from_env({"BATCHING_MODE": "delay", "BATCH_DELAY_SECONDS": "7", "HOME": "/tmp"}).batching
    debounce = Settings.from_env({"QUIET_SECONDS": "2", "HOME": "/tmp"}).batching

    assert delay == Delay(7, reply_when_locked=True) and delay.enqueue_delay == 7
    assert debounce == Debounce(2, 30, 20, "regenerate") and debounce.enqueue_delay == 0
    with pytest.raises(ConfigurationError, match="SUPERSEDE=drop does nothing"):
        Settings.from_env({"BATCHING_MODE": "delay", "SUPERSEDE": "drop", "HOME": "/tmp"})
    with pytest.raises(ConfigurationError, match="LOCKED_POLICY=defer does nothing"):
        Settings.from_env({"LOCKED_POLICY": "defer", "HOME": "/tmp"})
    Settings.from_env({"BATCHING_MODE": "delay", "QUIET_SECONDS": "5", "HOME": "/tmp"})
    assert "QUIET_SECONDS does nothing with BATCHING_MODE=delay" in caplog.text


def test_debounce_answers_after_the_quiet_or_at_a_cap():
    from replies_engine.batching_modes import Debounce

    debounce = Debounce(quiet_seconds=3, max_wait_seconds=30, max_batch_messages=3, supersede="regenerate")
    burst = [message("SMa", 0), message("SMb", 2)]

    assert not debounce.due(burst, NOW + 3) and debounce.due(burst, NOW + 5)
    assert debounce.due([message(f"SM{n}", n) for n in range(3)], NOW + 2)  # the size cap
    assert debounce.due([message(f"SM{n}", n * 2) for n in range(2)], NOW + 30)  # the wait cap
    assert debounce.due([{"message_id": "SMx", "timestamp": "yesterday"}], NOW)  # to the dead-letter queue
    assert debounce.next_look([message("SMa", 0)], NOW) == 3
    assert debounce.next_look([message("SMa", -29)], NOW) == 1
