"""Operator tool for dead-letter queues: list what failed, and replay it.

    python -m dropslot_kit.dlq list                      # every DLQ of the namespace, with counts
    python -m dropslot_kit.dlq show <queue> [--limit N]  # peek: type, event id, error
    python -m dropslot_kit.dlq replay <queue> [--limit N]

`<queue>` is the consumer queue (e.g. `dropslot.audit.record`) or its `.dlq`. Replay moves each
message back to its consumer queue with the retry counter reset; the inbox makes a replay of an
already-applied event harmless.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import aio_pika

from .broker import ATTEMPT_HEADER
from .settings import KitSettings


def _dlq(name: str) -> tuple[str, str]:
    base = name[: -len(".dlq")] if name.endswith(".dlq") else name
    return base, base + ".dlq"


async def peek(settings: KitSettings, queue: str, limit: int = 20) -> list[dict[str, Any]]:
    _, dlq = _dlq(queue)
    out: list[dict[str, Any]] = []
    conn = await aio_pika.connect(settings.rabbit_url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(dlq, passive=True)
        held = []
        for _ in range(limit):
            msg = await q.get(fail=False, no_ack=False)
            if msg is None:
                break
            held.append(msg)
            try:
                env = json.loads(msg.body)
                if isinstance(env, list):  # several events that could not be read as envelopes
                    env = env[0] if env and isinstance(env[0], dict) else {}
                etype, eid = env.get("type"), env.get("id")
            except (ValueError, AttributeError):
                etype, eid = None, None
            out.append({"message_id": msg.message_id, "type": etype, "event_id": eid,
                        "error": (msg.headers or {}).get("x-dropslot-error")})
        for msg in held:  # peek only: everything goes back
            await msg.nack(requeue=True)
    return out


async def replay(settings: KitSettings, queue: str, limit: int | None = None) -> int:
    base, dlq = _dlq(queue)
    moved = 0
    conn = await aio_pika.connect(settings.rabbit_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        q = await ch.declare_queue(dlq, passive=True)
        while limit is None or moved < limit:
            msg = await q.get(fail=False, no_ack=False)
            if msg is None:
                break
            headers = {k: v for k, v in (msg.headers or {}).items() if k not in (ATTEMPT_HEADER, "x-dropslot-error")}
            await ch.default_exchange.publish(
                aio_pika.Message(msg.body, headers=headers, message_id=msg.message_id,
                                 content_type=msg.content_type, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=base,
            )
            await msg.ack()
            moved += 1
    return moved


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m dropslot_kit.dlq")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    for name in ("show", "replay"):
        p = sub.add_parser(name)
        p.add_argument("queue")
        p.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    settings = KitSettings()
    if args.cmd == "list":
        from .testing import _namespace_queues

        for name in _namespace_queues(settings.broker_namespace):
            if name.endswith(".dlq"):
                print(name)
        return 0
    if args.cmd == "show":
        for row in asyncio.run(peek(settings, args.queue, args.limit or 20)):
            print(json.dumps(row))
        return 0
    n = asyncio.run(replay(settings, args.queue, args.limit))
    print(f"replayed {n} message(s) to {_dlq(args.queue)[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
