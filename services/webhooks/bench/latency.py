"""Webhook delivery latency under a drop storm: event created -> store's receiver.

    .venv/bin/python services/webhooks/bench/latency.py [--users 2000] [--seats 1000] [--concurrency 128]

Starts the whole system as processes (own database and broker namespace, like the e2e tests and
bench/drop_storm.py), registers users and an owner, creates a store with one webhook endpoint (a
real aiohttp receiver in this process, verifying every signature with the `standardwebhooks`
library) subscribed to `booking.reservation.*`, then a LIVE free drop with one hot slot, and
fires one reservation per user, C at a time, through the gateway. Each accepted reservation
produces `booking.reservation.created` and `booking.reservation.confirmed` (a free drop confirms
at once). Latency = arrival at the receiver - the event's `timestamp` (booking's occurred_at,
taken in its reserve transaction), so it covers booking's outbox relay, the broker, the webhooks
fan-out consumer, the delivery claim and the HTTP request. Prints p50/p95/p99/max, and the
time from the last accepted reservation to the last delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from standardwebhooks.webhooks import Webhook


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def start_system() -> Any:
    from dropslot_kit.launcher import check_infra, prepare_database
    from dropslot_kit.settings import KitSettings
    from dropslot_kit.testing import Infra, settings_for, start_system

    base = KitSettings()
    check_infra(base)
    suffix = uuid.uuid4().hex[:8]
    settings = settings_for(Infra(base.admin_database_url, base.rabbit_url, base.redis_url, "local"),
                            f"dropslot_whbench_{suffix}", f"whbench{suffix}")
    with open(os.devnull, "w") as quiet:
        prepare_database(settings, log=quiet)
    log_dir = Path(tempfile.mkdtemp(prefix="webhook-latency-"))
    extra = {
        "DROPSLOT_RATE_LIMIT_USER_PER_MINUTE": "100000000",
        "DROPSLOT_RATE_LIMIT_IP_PER_MINUTE": "100000000",
        "DROPSLOT_RATE_LIMIT_RESERVE_PER_MINUTE": "100000000",
        "DROPSLOT_LOG_LEVEL": "WARNING",
        "DROPSLOT_IDENTITY_ACCESS_TTL_SECONDS": "7200",
        "DROPSLOT_IDENTITY_ARGON2_TIME_COST": "1", "DROPSLOT_IDENTITY_ARGON2_MEMORY_KIB": "1024",
        "DROPSLOT_IDENTITY_ARGON2_PARALLELISM": "1",
        "DROPSLOT_DB_POOL_SIZE": "4", "DROPSLOT_DB_MAX_OVERFLOW": "4",
    }
    say(f"starting the system, logs in {log_dir}")
    return start_system(settings, log_dir, extra_env=extra), settings


async def call(s: aiohttp.ClientSession, method: str, url: str, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    for attempt in range(6):
        async with s.request(method, url, json=body, headers=headers) as r:
            text = await r.text()
            if r.status in (429, 502, 503, 504) and attempt < 5:
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            return r.status, (json.loads(text) if text else None)
    raise AssertionError("unreachable")


async def ok(s: aiohttp.ClientSession, method: str, url: str, body: Any = None,
             headers: dict[str, str] | None = None) -> Any:
    status, data = await call(s, method, url, body, headers)
    if status not in (200, 201):
        raise RuntimeError(f"{method} {url} -> {status}: {data}")
    return data


async def register(s: aiohttp.ClientSession, api: str, n: int) -> list[dict[str, str]]:
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> dict[str, str]:
        email, pw = f"wh-{i}-{uuid.uuid4().hex[:8]}@example.com", "webhook bench password 42"
        async with sem:
            await ok(s, "POST", f"{api}/auth/register", {"email": email, "password": pw, "name": f"Fan {i}"})
            tokens = await ok(s, "POST", f"{api}/auth/login", {"email": email, "password": pw})
        return {"Authorization": f"Bearer {tokens['access_token']}"}

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def cpu_seconds(procs: list[Any]) -> dict[str, float]:
    """CPU time (user + system) each service process has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for p in procs:
        try:
            fields = Path(f"/proc/{p.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[p.name] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return out


def start_receiver() -> tuple[subprocess.Popen[bytes], int, Path]:
    """The store's endpoint runs in a process of its own: in this one it would queue behind the
    storm's own HTTP client and measure this script, not the system."""
    from dropslot_kit.launcher import free_port

    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="webhook-receiver-")) / "arrivals.jsonl"
    receiver = subprocess.Popen([sys.executable, __file__, "--receiver", str(port), str(log_path)])
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    return receiver, port, log_path


async def run(args: argparse.Namespace, api: str, procs: list[Any], port: int, log_path: Path) -> dict[str, Any]:
    def arrivals() -> list[tuple[float, bytes, dict[str, str]]]:
        if not log_path.exists():
            return []
        out = []
        for line in log_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line being written
            out.append((rec["at"], rec["body"].encode(), rec["headers"]))
        return out

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=args.concurrency)) as s:
        say(f"registering {args.users + 1} users")
        headers = await register(s, api, args.users + 1)
        owner = headers[0]
        store = await ok(s, "POST", f"{api}/stores", {"name": "Bench", "slug": f"bench-{uuid.uuid4().hex[:8]}"}, owner)
        for _ in range(100):  # the store's creation reaches webhooks asynchronously
            status, ep = await call(s, "POST", f"{api}/stores/{store['id']}/webhook-endpoints",
                                    {"url": f"http://127.0.0.1:{port}/hook", "event_types": ["booking.reservation.*"]},
                                    owner)
            if status == 201:
                break
            await asyncio.sleep(0.2)
        else:
            raise RuntimeError(f"could not create the endpoint: {ep}")
        product = await ok(s, "POST", f"{api}/stores/{store['id']}/products", {
            "name": "Sneaker", "sku": f"sku-{uuid.uuid4().hex[:6]}", "price_cents": 0, "currency": "EUR"}, owner)
        now = datetime.now(UTC)
        drop = await ok(s, "POST", f"{api}/stores/{store['id']}/drops", {
            "product_id": product["id"], "name": "Storm", "starts_at": now.isoformat(),
            "ends_at": (now + timedelta(hours=8)).isoformat(), "reservation_rule": {"max_per_user": 1}}, owner)
        await ok(s, "POST", f"{api}/drops/{drop['id']}/publish", None, owner)
        start = now + timedelta(hours=2)
        for _ in range(100):
            status, slot = await call(s, "POST", f"{api}/drops/{drop['id']}/slots", {
                "start_time": start.isoformat(), "end_time": (start + timedelta(minutes=30)).isoformat(),
                "capacity_total": args.seats}, owner)
            if status == 201:
                break
            await asyncio.sleep(0.2)
        for _ in range(200):
            if (await ok(s, "GET", f"{api}/slots/{slot['id']}")).get("sellable", True):
                break
            await asyncio.sleep(0.1)

        say(f"storm: {args.users} users, {args.seats} seats, {args.concurrency} at a time")
        queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        for h in headers[1:]:
            queue.put_nowait(h)
        accepted: list[float] = []

        async def worker() -> None:
            while not queue.empty():
                h = queue.get_nowait()
                status, _ = await call(s, "POST", f"{api}/reservations", {"slot_id": slot["id"]},
                                       {**h, "Idempotency-Key": uuid.uuid4().hex})
                if status == 201:
                    accepted.append(time.time())

        cpu0 = cpu_seconds(procs)
        t0 = time.time()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        t_storm = time.time()
        expected = 2 * len(accepted)  # created + confirmed
        say(f"storm over in {t_storm - t0:.1f}s: {len(accepted)} accepted; waiting for {expected} webhooks")
        for _ in range(int(args.wait * 2)):
            if len({a[2].get("webhook-id") for a in arrivals()}) >= expected:
                break
            await asyncio.sleep(0.5)
        cpu1 = cpu_seconds(procs)
        # Where the time went: event -> delivery row (broker + fan-out) -> attempt started (claim).
        log: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = await ok(s, "GET", f"{api}/webhook-endpoints/{ep['id']}/events?limit=200"
                            + (f"&cursor={cursor}" if cursor else ""), None, owner)
            log += page["items"]
            if not (cursor := page["next_cursor"]):
                break
    got = arrivals()

    def ts(v: str) -> float:
        return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()

    fan = sorted(ts(e["created_at"]) - ts(e["occurred_at"]) for e in log)
    claim = sorted(ts(e["last_attempt_at"]) - ts(e["created_at"]) for e in log if e["last_attempt_at"])

    verifier = Webhook(ep["secret"])
    lat = []
    for at, body, hdrs in got:
        payload = verifier.verify(body, hdrs)
        lat.append(at - datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00")).timestamp())
    lat.sort()
    ids = [a[2].get("webhook-id") for a in got]

    def pct(p: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(len(lat) * p))]

    report = {
        "users": args.users, "seats": args.seats, "concurrency": args.concurrency, "accepted": len(accepted),
        "webhooks_expected": expected, "webhooks_received": len(set(ids)), "repeats": len(ids) - len(set(ids)),
        "latency_ms": {"p50": round(pct(0.50)), "p95": round(pct(0.95)), "p99": round(pct(0.99)),
                       "max": round(1000 * lat[-1])} if lat else None,
        "storm_seconds": round(t_storm - t0, 2),
        "last_delivery_after_storm_seconds": round(max(a[0] for a in got) - t_storm, 2) if got else None,
        "mean_latency_ms": round(1000 * statistics.mean(lat)) if lat else None,
        "cpu_seconds_during_storm_and_delivery": {k: round(cpu1[k] - cpu0.get(k, 0.0), 1) for k in cpu1},
        "event_to_delivery_row_ms": {"p50": round(1000 * fan[len(fan) // 2]),
                                     "p99": round(1000 * fan[int(len(fan) * 0.99) - 1])} if fan else None,
        "delivery_row_to_attempt_ms": {"p50": round(1000 * claim[len(claim) // 2]),
                                       "p99": round(1000 * claim[int(len(claim) * 0.99) - 1])} if claim else None,
    }
    return report


def serve_receiver(port: int, log_path: Path) -> None:
    """The store's endpoint: answers 204 at once and appends each arrival to a JSON-lines file."""
    out = log_path.open("a", buffering=1)

    async def hook(request: web.Request) -> web.Response:
        at = time.time()
        body = await request.read()
        out.write(json.dumps({"at": at, "headers": dict(request.headers), "body": body.decode()}) + "\n")
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--receiver":
        serve_receiver(int(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(prog="webhook latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seats", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--wait", type=float, default=180.0, help="seconds to wait for the last webhooks")
    args = parser.parse_args()
    running, settings = start_system()
    receiver, port, log_path = start_receiver()
    try:
        report = asyncio.run(run(args, running.api, running.system.procs, port, log_path))
    finally:
        receiver.terminate()
        receiver.wait()
        running.system.stop()
        from dropslot_kit.testing import drop_test_resources

        drop_test_resources(settings)
    print(json.dumps(report, indent=2))
    return 0 if report["webhooks_received"] == report["webhooks_expected"] else 1


if __name__ == "__main__":
    sys.exit(main())
