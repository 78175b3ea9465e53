"""The pure-ASGI reserve handler validates bodies exactly like the FastAPI route would."""

from __future__ import annotations

import json
import uuid

import pytest
from dropslot_booking.api.fast import parse_body
from dropslot_kit.errors import Problem


def test_a_valid_body() -> None:
    sid = uuid.uuid4()
    assert parse_body(json.dumps({"slot_id": str(sid)}).encode()) == (sid, None)
    assert parse_body(json.dumps({"slot_id": str(sid), "customer_note": "hi", "extra": 1}).encode()) == (sid, "hi")


@pytest.mark.parametrize(("raw", "field"), [
    (b"", "body"),
    (b"not json", "body"),
    (b"[]", "body"),
    (b"{}", "slot_id"),
    (b'{"slot_id": "nope"}', "slot_id"),
    (b'{"slot_id": 12}', "slot_id"),
    (json.dumps({"slot_id": str(uuid.uuid4()), "customer_note": 5}).encode(), "customer_note"),
    (json.dumps({"slot_id": str(uuid.uuid4()), "customer_note": "x" * 501}).encode(), "customer_note"),
])
def test_invalid_bodies_are_422_naming_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(Problem) as info:
        parse_body(raw)
    body = info.value.body()
    assert info.value.status == 422 and body["type"].endswith("/validation-error")
    assert body["errors"][0]["name"] == field
