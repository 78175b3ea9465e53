import uuid

import pytest
from dropslot_contracts import Actor, Envelope, UnknownEvent, all_events, model_for, routing_key_for
from dropslot_contracts.events.identity import UserRegistered
from dropslot_contracts.snapshot import drift, render, write


def test_snapshots_match_contracts():
    problems = drift()
    assert not problems, (
        "contracts changed: run `uv run python -m dropslot_contracts.snapshot --write` and commit\n"
        + "\n".join(problems)
    )


def test_snapshot_check_detects_a_changed_contract(tmp_path):
    write(tmp_path)
    assert drift(tmp_path) == []
    victim = tmp_path / "identity.user.registered.v1.json"
    victim.write_text(victim.read_text().replace('"email"', '"e_mail"'))
    assert drift(tmp_path) == ["contract changed without its snapshot: identity.user.registered.v1.json"]
    (tmp_path / "nobody.v1.json").write_text(render({}))
    assert "snapshot of no contract: nobody.v1.json" in drift(tmp_path)


def test_every_event_type_is_a_routing_key_and_unique():
    seen = set()
    for cls in all_events():
        assert routing_key_for(cls.TYPE) == cls.TYPE
        assert (cls.TYPE, cls.VERSION) not in seen
        seen.add((cls.TYPE, cls.VERSION))
    producers = {t.split(".")[0] for t, _ in seen}
    assert producers == {"identity", "catalog", "booking", "payments", "notifications", "webhooks", "audit"}


@pytest.mark.parametrize("bad", ["booking", "booking.reservation", "Booking.x.y", "a.b.c.d", "a..b"])
def test_routing_key_rule_rejects_malformed_types(bad):
    with pytest.raises(ValueError):
        routing_key_for(bad)


def test_envelope_round_trip_gives_the_typed_event():
    uid = uuid.uuid4()
    env = Envelope.wrap(
        UserRegistered(user_id=uid, email="a@b.c", name="A"),
        producer="identity",
        actor=Actor(user_id=uid, ip="10.0.0.1", user_agent="pytest"),
        correlation_id="req-1",
    )
    again = Envelope.model_validate_json(env.model_dump_json())
    assert again.id == env.id and again.routing_key == "identity.user.registered"
    typed = again.typed()
    assert isinstance(typed, UserRegistered) and typed.user_id == uid
    assert again.actor.ip == "10.0.0.1"


def test_unknown_event_version_is_an_error():
    with pytest.raises(UnknownEvent):
        model_for("identity.user.registered", 99)
