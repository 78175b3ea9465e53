"""The drop storm: many people pressing "reserve" at once, through the gateway, against the whole
system started as processes (its own database and broker namespace, like the e2e tests).

    make bench                                   # defaults below
    make bench BENCH_ARGS="--users 2000 --concurrency 128"
    .venv/bin/python bench/drop_storm.py --help

What it does (everything through the public API, see bench/README.md for the choices):
 1. starts the system (2 booking replicas, gateway rate limits raised so the storm is not
    throttled), registers N users and an owner through identity, creates a store, a product, two
    drops and their slots through catalog and booking, publishes the drops (LIVE at once);
 2. phase "hot slot": every user fires one reservation at one slot of 1,000 seats, C at a time;
 3. phase "20 slots": every user fires one reservation at a random one of 20 slots of 50;
 4. checks the database: oversold seats, accepted-but-missing reservations, the invariants;
 5. the database's own ceiling for the same single-reservation transaction on one hot row (an
    asyncpg loop calling `booking.reserve_seats` with one request, at several concurrencies);
 6. prints accepted/s until sold out, time to sell out, p50/p95/p99 of accepted and refused
    requests, refused/s after sell-out, the ratio to the database ceiling, and each service
    process's peak RSS (VmHWM from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
from dropslot_gateway.upstream import ConnectFailed, UpstreamBroken, UpstreamPool
from dropslot_kit import heap

ROOT = Path(__file__).resolve().parents[1]
STORM_TIMEOUT_SECONDS = 600


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- the system -----------------------------------------------------------------------------------
def start(args: argparse.Namespace) -> tuple[Any, Any, Path]:
    from dropslot_kit.launcher import check_infra, prepare_database
    from dropslot_kit.settings import KitSettings
    from dropslot_kit.testing import Infra, settings_for, start_system

    base = KitSettings()
    check_infra(base)
    suffix = uuid.uuid4().hex[:8]
    infra = Infra(base.admin_database_url, base.rabbit_url, base.redis_url, "local")
    settings = settings_for(infra, f"dropslot_bench_{suffix}", f"bench{suffix}")
    say(f"database {settings.database_url.rsplit('/', 1)[-1]}, broker namespace {settings.broker_namespace}")
    with open(os.devnull, "w") as quiet:
        prepare_database(settings, log=quiet)
    log_dir = Path(tempfile.mkdtemp(prefix="drop-storm-"))
    extra = {
        # The storm must measure booking, not the gateway's abuse protection.
        "DROPSLOT_RATE_LIMIT_USER_PER_MINUTE": "100000000",
        "DROPSLOT_RATE_LIMIT_IP_PER_MINUTE": "100000000",
        "DROPSLOT_RATE_LIMIT_RESERVE_PER_MINUTE": "100000000",
        "DROPSLOT_LOG_LEVEL": "WARNING",
        # Access tokens must outlive registering thousands of users.
        "DROPSLOT_IDENTITY_ACCESS_TTL_SECONDS": "7200",
        "DROPSLOT_BOOKING_BATCHING": "true" if args.batching else "false",
        "DROPSLOT_BOOKING_BATCH_LINGER_MS": str(args.linger_ms),
        # PostgreSQL here allows 100 connections for everyone; nine processes with the default
        # pools (10 + 10 overflow each) could take them all.
        "DROPSLOT_DB_POOL_SIZE": "4",
        "DROPSLOT_DB_MAX_OVERFLOW": "4",
    }
    if not args.real_argon2:
        # Registering 5,000 users with production argon2 (~80 ms x 2 per user on 2 cores) takes
        # minutes and measures nothing about the storm, which never hashes a password.
        extra.update({"DROPSLOT_IDENTITY_ARGON2_TIME_COST": "1", "DROPSLOT_IDENTITY_ARGON2_MEMORY_KIB": "1024",
                      "DROPSLOT_IDENTITY_ARGON2_PARALLELISM": "1"})
    say(f"starting the system ({args.replicas} booking replicas, batching {'on' if args.batching else 'off'}), "
        f"logs in {log_dir}")
    running = start_system(settings, log_dir, booking_replicas=args.replicas, extra_env=extra,
                           nice=None if args.priorities else {})
    say(f"system ready: gateway {running.url}")
    return running, settings, log_dir


# --- setup through the API ------------------------------------------------------------------------
async def post(s: aiohttp.ClientSession, url: str, body: Any = None, headers: dict[str, str] | None = None,
               expect: tuple[int, ...] = (200, 201)) -> Any:
    for attempt in range(5):
        async with s.post(url, json=body, headers=headers) as r:
            text = await r.text()
            if r.status in expect:
                return json.loads(text) if text else None
            if r.status in (429, 502, 503, 504) and attempt < 4:
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            raise RuntimeError(f"POST {url} -> {r.status}: {text[:300]}")
    raise AssertionError("unreachable")


async def register(s: aiohttp.ClientSession, api: str, n: int, parallel: int) -> list[dict[str, Any]]:
    users: list[dict[str, Any]] = []
    sem = asyncio.Semaphore(parallel)
    started = time.perf_counter()
    password = "storm trooper password 42"

    async def one(i: int) -> None:
        email = f"storm-{i}-{uuid.uuid4().hex[:8]}@example.com"
        async with sem:
            await post(s, f"{api}/auth/register", {"email": email, "password": password, "name": f"Fan {i}"})
            tokens = await post(s, f"{api}/auth/login", {"email": email, "password": password})
        users.append({"email": email, "headers": {"Authorization": f"Bearer {tokens['access_token']}"}})
        if len(users) % 500 == 0 or len(users) == n:
            rate = len(users) / (time.perf_counter() - started)
            say(f"  registered {len(users)}/{n} users ({rate:.0f}/s)")

    await asyncio.gather(*(one(i) for i in range(n)))
    return users


async def setup_drop(s: aiohttp.ClientSession, api: str, owner: dict[str, Any], store: dict[str, Any],
                     product_id: str, name: str, slots: int, seats: int) -> list[str]:
    h = owner["headers"]
    now = datetime.now(UTC)
    drop = await post(s, f"{api}/stores/{store['id']}/drops", {
        "product_id": product_id, "name": name, "starts_at": now.isoformat(),
        "ends_at": (now + timedelta(hours=12)).isoformat(), "reservation_rule": {"max_per_user": 1},
    }, h)
    published = await post(s, f"{api}/drops/{drop['id']}/publish", None, h)
    assert published["status"] == "LIVE", published
    first = now + timedelta(hours=2)
    ids = []
    for i in range(slots):
        start = first + timedelta(minutes=30 * i)
        slot = await post(s, f"{api}/drops/{drop['id']}/slots", {
            "start_time": start.isoformat(), "end_time": (start + timedelta(minutes=30)).isoformat(),
            "capacity_total": seats,
        }, h)
        ids.append(slot["id"])
    for sid in ids:  # the drop's LIVE event reaches booking asynchronously
        for _ in range(200):
            async with s.get(f"{api}/slots/{sid}") as r:
                if (await r.json())["sellable"]:
                    break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"slot {sid} never became sellable")
    return ids


# --- the storm ------------------------------------------------------------------------------------
@dataclass
class Result:
    started: float
    ended: float
    status: int
    kind: str
    body: dict[str, Any] | None = None

    @property
    def latency_ms(self) -> float:
        return 1000 * (self.ended - self.started)


@dataclass
class Phase:
    name: str
    seats: int
    results: list[Result] = field(default_factory=list)
    t0: float = 0.0
    t1: float = 0.0
    # CPU seconds per process at t0 and t1: the storm's own, not the warm-up's (see storm)
    cpu0: dict[str, float] = field(default_factory=dict)
    cpu1: dict[str, float] = field(default_factory=dict)


async def storm(
    apis: list[str], users: list[dict[str, Any]], slot_ids: list[str], concurrency: int, phase: Phase,
    cpu: Callable[[], dict[str, float]],
) -> None:
    order = list(users)
    random.shuffle(order)
    bodies = {sid: json.dumps({"slot_id": sid}).encode() for sid in slot_ids}
    # Every request is built before the storm (headers, a fresh Idempotency-Key, the body): the
    # load generator shares the two cores with the system it measures, so it does no more
    # during the storm than send, wait and record.
    queue: asyncio.Queue[tuple[list[tuple[bytes, bytes]], bytes]] = asyncio.Queue()
    for u in order:
        slot = slot_ids[0] if len(slot_ids) == 1 else random.choice(slot_ids)
        headers = [(k.lower().encode(), v.encode()) for k, v in u["headers"].items()]
        headers += [(b"content-type", b"application/json"), (b"idempotency-key", uuid.uuid4().hex.encode())]
        queue.put_nowait((headers, bodies[slot]))
    total = len(order)
    # The gateway's own keep-alive client (dropslot_gateway.upstream): the load generator shares
    # the two cores with the system it measures, and aiohttp's client cost ~3x its CPU per request.
    pool = UpstreamPool(limit=concurrency, connect_timeout=10)
    targets = []
    for i in range(concurrency):
        url = urlsplit(apis[i % len(apis)])
        targets.append((f"{url.scheme}://{url.netloc}", url.path))
    try:
        # Before the drop opens, the crowd sits on the drop's page: each connection loads the
        # slot's public availability once (through the gateway to booking, so the gateway's own
        # keep-alive connections to booking are open too, as steady traffic would have them).
        async with asyncio.timeout(60):
            await asyncio.gather(*(pool.request(base, "GET", f"{path}/slots/{slot_ids[i % len(slot_ids)]}", [], b"")
                                   for i, (base, path) in enumerate(targets)))

        async def worker(base: str, path: str) -> None:
            target = f"{path}/reservations"
            while True:
                try:
                    headers, body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t = time.perf_counter()
                try:
                    status, _, data = await pool.request(base, "POST", target, headers, body)
                except (ConnectFailed, UpstreamBroken) as exc:
                    phase.results.append(Result(t, time.perf_counter(), 0, type(exc).__name__))
                    continue
                end = time.perf_counter()
                try:
                    answer = orjson.loads(data) if data else {}
                except ValueError:  # not JSON (a proxy's error page): keep its start as the detail
                    answer = {"detail": data[:200].decode(errors="replace")}
                kind = "accepted" if status == 201 else str(answer.get("type", status)).rsplit("/", 1)[-1]
                keep = status == 201 or status not in (409,)
                phase.results.append(Result(t, end, status, kind, answer if keep else None))

        async def progress() -> None:
            while True:
                await asyncio.sleep(1.0)
                done = len(phase.results)
                ok = sum(1 for r in phase.results if r.status == 201)
                say(f"  {phase.name}: {done}/{total} answered, {ok}/{phase.seats} seats taken")

        ticker = asyncio.create_task(progress())
        # The CPU the storm used, from here: the warm-up's GETs above (a slot read each through
        # FastAPI and SQLAlchemy) are no part of it.
        phase.cpu0, phase.t0 = cpu(), time.perf_counter()
        # One deadline for the whole storm (a timer per request would cost the load generator
        # more than the request's own work): a system that hangs fails the phase.
        try:
            async with asyncio.timeout(STORM_TIMEOUT_SECONDS):
                await asyncio.gather(*(worker(base, path) for base, path in targets))
        finally:
            ticker.cancel()
        phase.cpu1, phase.t1 = cpu(), time.perf_counter()
    finally:
        pool.close()


async def slot_reads(running: Any, settings: Any, api: str, slot_ids: list[str], n: int,
                     concurrency: int) -> dict[str, Any]:
    """The crowd reloading availability: n public `GET /slots/{id}` (no token) through the gateway
    at `concurrency` connections, each of a random slot of the (sold-out) 20-slot drop."""
    await settle(running, settings)
    say(f"slot reads: {n} GET /slots/{{id}} at {concurrency} connections")
    url = urlsplit(api)
    base, path = f"{url.scheme}://{url.netloc}", url.path
    targets = [f"{path}/slots/{random.choice(slot_ids)}" for _ in range(n)]
    pool = UpstreamPool(limit=concurrency, connect_timeout=10)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    try:
        async with asyncio.timeout(60):  # the connections, opened before the clock starts
            await asyncio.gather(*(pool.request(base, "GET", targets[i], [], b"") for i in range(concurrency)))

        async def worker() -> None:
            while targets:
                target = targets.pop()
                t = time.perf_counter()
                try:
                    status, _, _ = await pool.request(base, "GET", target, [], b"")
                except (ConnectFailed, UpstreamBroken):
                    status = 0
                latencies.append(1000 * (time.perf_counter() - t))
                statuses[status] = statuses.get(status, 0) + 1

        cpu0, t0 = cpu_seconds(running.system), time.perf_counter()
        async with asyncio.timeout(STORM_TIMEOUT_SECONDS):
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        took, cpu1 = time.perf_counter() - t0, cpu_seconds(running.system)
    finally:
        pool.close()
    out = {"reads": n, "reads_per_s": round(n / took, 1), "statuses": statuses,
           "ms": {f"p{p}": round(pct(latencies, p), 1) for p in (50, 95, 99)},
           "cpu_us_per_read": {k: round(1e6 * (cpu1[k] - cpu0.get(k, 0.0)) / n) for k in sorted(cpu1) if k in cpu0
                               and not k.startswith("[machine idle")}}
    say(f"  done: {out['reads_per_s']}/s, p99 {out['ms']['p99']} ms, statuses {statuses}")
    return out


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


def summarize(phase: Phase) -> dict[str, Any]:
    acc = [r for r in phase.results if r.status == 201]
    ref = [r for r in phase.results if r.status != 201]
    errors: dict[str, int] = {}
    for r in ref:
        if r.status != 409:
            detail = f"{r.status} {(r.body or {}).get('detail', r.kind)}"
            errors[detail] = errors.get(detail, 0) + 1
    sold_out_at = max((r.ended for r in acc), default=phase.t0)
    after = [r for r in ref if r.started >= sold_out_at]
    kinds: dict[str, int] = {}
    for r in phase.results:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    sell_time = sold_out_at - phase.t0
    refused_window = phase.t1 - sold_out_at
    return {
        "phase": phase.name,
        "requests": len(phase.results),
        "accepted": len(acc),
        "seats": phase.seats,
        "outcomes": kinds,
        "errors": errors,
        "time_to_sell_out_s": round(sell_time, 3),
        "accepted_per_s": round(len(acc) / sell_time, 1) if sell_time > 0 else None,
        "accepted_ms": {f"p{p}": round(pct([r.latency_ms for r in acc], p), 1) for p in (50, 95, 99)},
        "refused_ms": {f"p{p}": round(pct([r.latency_ms for r in ref], p), 1) for p in (50, 95, 99)},
        "refused_after_sell_out": len(after),
        "refused_per_s_after_sell_out": round(len(after) / refused_window, 1) if refused_window > 0.2 and after else None,
        "total_s": round(phase.t1 - phase.t0, 3),
        "accepted_ids": [r.body["id"] for r in acc if r.body],
    }


# --- checks against the database ------------------------------------------------------------------
async def check_db(settings: Any, slot_ids: list[str], accepted_ids: list[str]) -> dict[str, Any]:
    from dropslot_booking.adapters.invariants import INVARIANT_SQL

    conn = await asyncpg.connect(settings.model_copy(update={"service": "booking"}).plain_service_dsn(),
                                 server_settings={"search_path": "booking"})
    try:
        await conn.execute("SELECT set_config('dropslot.scope', 'all', false)")
        rows = await conn.fetch(
            """SELECT s.id, s.capacity_total, (SELECT count(*) FROM reservations r WHERE r.slot_id = s.id
                      AND r.state IN ('PENDING', 'CONFIRMED', 'CHECKED_IN')) AS active
               FROM slots s WHERE s.id = ANY($1::uuid[])""",
            [uuid.UUID(s) for s in slot_ids],
        )
        oversold = sum(max(0, r["active"] - r["capacity_total"]) for r in rows)
        found = await conn.fetchval(
            "SELECT count(*) FROM reservations WHERE id = ANY($1::uuid[]) AND state = 'CONFIRMED'",
            [uuid.UUID(i) for i in accepted_ids],
        )
        problems = await conn.fetch(INVARIANT_SQL.replace(":slot", "NULL"))
        return {"oversold": oversold, "missing": len(accepted_ids) - int(found),
                "invariant_violations": [p["problem"] for p in problems]}
    finally:
        await conn.close()


# --- the database's own ceiling --------------------------------------------------------------------
async def db_ceiling(settings: Any, owner_drop_slot: str, seconds: float, levels: list[int]) -> dict[str, Any]:
    """`booking.reserve_seats` with ONE request per transaction (the hot path without batching),
    looped on one hot slot from asyncpg, with realistic arguments (an idempotency key, the 201 body,
    two outbox events of the same size as the real ones)."""
    from dropslot_booking.adapters.hotpath import RESERVE, Outbox, Seat, reserve_args

    dsn = settings.model_copy(update={"service": "booking"}).plain_service_dsn()
    slot_id = uuid.UUID(owner_drop_slot)
    template = json.dumps({"id": str(uuid.uuid4()), "type": "booking.reservation.created", "version": 1,
                           "producer": "booking", "data": {"reservation": {"x": "y" * 900}}})
    out: dict[str, Any] = {}
    for n in levels:
        conns = [await asyncpg.connect(dsn, server_settings={"search_path": "booking"}) for _ in range(n)]
        done = 0
        stop = time.perf_counter() + seconds

        async def loop(conn: asyncpg.Connection, stop: float = stop) -> None:
            nonlocal done
            while time.perf_counter() < stop:
                rid = uuid.uuid4()
                seat = Seat(id=rid, user_id=uuid.uuid4(), key=uuid.uuid4().hex, fingerprint="f" * 32,
                            response=template, state="CONFIRMED", expires_at=None, confirmed_at=datetime.now(UTC),
                            note=None, token="t" * 375, qr_code_url="http://x/qr.svg", amount_cents=0,
                            currency="EUR", requires_payment=False,
                            outbox=[Outbox(uuid.uuid4(), "booking.reservation.created", template, None),
                                    Outbox(uuid.uuid4(), "booking.reservation.confirmed", template, None)])
                rows = await conn.fetch(RESERVE, *reserve_args(slot_id, datetime.now(UTC), [seat]))
                if rows[0]["r_outcome"] != "ok":
                    raise RuntimeError(f"ceiling loop refused: {rows[0]['r_outcome']}")
                done += 1

        t = time.perf_counter()
        await asyncio.gather(*(loop(c) for c in conns))
        elapsed = time.perf_counter() - t
        for c in conns:
            await c.close()
        out[n] = round(done / elapsed, 1)
        say(f"  database ceiling with {n} connection(s): {out[n]:.0f} reservations/s")
    return {"per_connections": out, "best": max(out.values())}


async def booking_counters(system: Any) -> dict[str, float]:
    """Group-commit counters summed over the booking replicas (from their /metrics)."""
    wanted = ("booking_reserve_batch_size_sum", "booking_reserve_batch_size_count",
              "booking_reserve_transaction_seconds_sum", "booking_reserve_transaction_seconds_count")
    out = dict.fromkeys(wanted, 0.0)
    async with aiohttp.ClientSession() as s:
        for proc in system.procs:
            if proc.service != "booking":
                continue
            async with s.get(proc.url + "/metrics") as r:
                for line in (await r.text()).splitlines():
                    name, _, value = line.partition(" ")
                    if name in out:
                        out[name] += float(value)
    return out


SERVERS = {"postgres": "(postgresql)", "beam.smp": "(rabbitmq)", "redis-server": "(redis)"}


def cpu_seconds(system: Any) -> dict[str, float]:
    """User + system CPU seconds each service process has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for proc in system.procs:
        if proc.popen is None:
            continue
        try:
            fields = Path(f"/proc/{proc.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[proc.name] = (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    me = os.times()
    out["(load generator)"] = me.user + me.system
    # The whole machine (/proc/stat: every core, in % of one core): busy, idle and stolen by
    # the hypervisor, to tell a saturated machine from a noisy neighbour.
    with contextlib.suppress(OSError, ValueError):
        cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        out["[machine busy]"] = (sum(cpu[:3]) + sum(cpu[5:7])) / tick  # user nice system irq softirq
        out["[machine idle]"] = (cpu[3] + cpu[4]) / tick  # idle iowait
        out["[machine steal]"] = (cpu[7] if len(cpu) > 7 else 0) / tick
    # The shared servers, every process of them (other databases' backends included).
    for label in SERVERS.values():
        out[label] = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, _, rest = stat.read_text().rpartition(")")
            comm = head.partition("(")[2]
            fields = rest.split()
        except OSError:
            continue
        label = SERVERS.get(comm)
        if label:
            # Own time plus that of children already gone (the postmaster's cutime/cstime hold
            # the backends that ended meanwhile; without them a phase could come out negative).
            out[label] += sum(int(f) for f in fields[11:15]) / tick
    return out


def peak_rss(system: Any) -> dict[str, float]:
    rss = {}
    for proc in system.procs:
        if proc.popen is None:
            continue
        try:
            for line in Path(f"/proc/{proc.popen.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    rss[proc.name] = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            continue
    return rss


def renice(system: Any, name: str, niceness: int) -> None:
    """Lower a running process's CPU priority (threads and autogroup, see the launcher)."""
    from dropslot_kit.launcher import lower_priority

    proc = system.find(name)
    if proc.popen is not None:
        say(f"  {name} (pid {proc.popen.pid}): {lower_priority(proc.popen.pid, niceness)}")


def stop_process(system: Any, name: str) -> None:
    import signal

    proc = system.find(name)
    if proc.popen is not None and proc.popen.poll() is None:
        os.killpg(proc.popen.pid, signal.SIGTERM)
        proc.popen.wait(15)


def queued_messages(namespace: str, services: set[str]) -> int | None:
    """Messages waiting or unacknowledged in the queues of these services (`<ns>.<service>.<handler>`)
    of this system (None: cannot tell)."""
    import subprocess

    try:
        out = subprocess.run(["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name", "messages"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or ".retry." in parts[0] or parts[0].endswith(".dlq"):
            continue
        ns, _, rest = parts[0].partition(".")
        if ns == namespace and rest.partition(".")[0] in services:
            total += int(parts[1])
    return total


async def pending_mail(settings: Any) -> int:
    """Mails notifications still has to send (its sender's queue, not RabbitMQ's): due now, or
    leased to its sender, which is sending them. A leased mail stays PENDING with its next
    attempt pushed a lease ahead (`notifications_lease_seconds`); counting only those due now,
    a storm could begin while the sender was still delivering its last batch of sign-up mails (up
    to `notifications_send_batch`, each rendered, sent over SMTP, recorded, and its
    `notification.sent` event relayed and consumed)."""
    from dropslot_notifications.config import Settings as NotificationSettings

    lease = NotificationSettings.model_fields["notifications_lease_seconds"].default
    conn = await asyncpg.connect(settings.model_copy(update={"service": "notifications"}).plain_service_dsn())
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM notifications.notifications WHERE status = 'PENDING'"
            " AND next_attempt_at <= now() + make_interval(secs => $1)", float(lease)))
    finally:
        await conn.close()


async def settle(running: Any, settings: Any, limit: float = 300.0) -> None:
    """Wait until the consumers have caught up with everything before (sign-ups, the previous
    phase), so each storm starts on a quiet system, as a drop does: people sign up days before.
    Services stopped for a diagnostic phase are left out (their queues only grow)."""
    services = {p.service for p in running.system.procs if p.popen is not None and p.popen.poll() is None}
    started = time.perf_counter()
    last_said = 0.0
    quiet = 0  # consecutive empty readings: one may fall between an outbox relay's batches
    while True:
        waiting = await asyncio.to_thread(queued_messages, settings.broker_namespace, services)
        if waiting is None:
            say("  (rabbitmqctl unavailable: cannot wait for the consumers to catch up; waiting 2 s)")
            await asyncio.sleep(2)
            return
        if "notifications" in services:
            # Its own work queue too: the sign-ups' verification mails (days before a real drop).
            waiting += await pending_mail(settings)
        spent = time.perf_counter() - started
        quiet = quiet + 1 if waiting == 0 else 0
        if quiet == 2:
            say(f"  consumers caught up ({spent:.1f} s)")
            return
        if spent > limit:
            say(f"  {waiting} events still queued after {limit:.0f} s; storming anyway")
            return
        if spent - last_said >= 5:
            say(f"  waiting for the consumers: {waiting} events queued or mails to send")
            last_said = spent
        await asyncio.sleep(1.0)


async def run_phase(running: Any, settings: Any, apis: list[str], users: list[dict[str, Any]], name: str,
                    slot_ids: list[str], seats: int, args: argparse.Namespace) -> dict[str, Any]:
    phase = Phase(name, seats)
    await settle(running, settings)
    heap.settle()  # the load generator too: users and tokens stay, a full collection mid-storm would stall it
    say(f"storm '{name}': {len(users)} users at {args.concurrency} connections for {seats} seats")
    m0 = await booking_counters(running.system)
    await storm(apis, users, slot_ids, args.concurrency, phase, lambda: cpu_seconds(running.system))
    m1 = await booking_counters(running.system)
    summary = summarize(phase)
    txns = m1["booking_reserve_transaction_seconds_count"] - m0["booking_reserve_transaction_seconds_count"]
    batches = m1["booking_reserve_batch_size_count"] - m0["booking_reserve_batch_size_count"]
    summary["reserve_transactions"] = int(txns)
    summary["avg_batch"] = round((m1["booking_reserve_batch_size_sum"] - m0["booking_reserve_batch_size_sum"])
                                 / batches, 1) if batches else 1.0
    summary["avg_transaction_ms"] = round(1000 * (m1["booking_reserve_transaction_seconds_sum"]
                                                  - m0["booking_reserve_transaction_seconds_sum"]) / txns, 1) \
        if txns else None
    # Where the two cores went during the storm (per process, in % of one core).
    cpu0, cpu1, took = phase.cpu0, phase.cpu1, phase.t1 - phase.t0
    summary["cpu_percent"] = {k: round(100 * (cpu1[k] - cpu0.get(k, 0.0)) / took) for k in sorted(cpu1) if k in cpu0}
    checks = await check_db(settings, slot_ids, summary["accepted_ids"])
    summary.update(checks)
    summary.pop("accepted_ids")
    say(f"  done: {summary['accepted']} accepted at {summary['accepted_per_s']}/s, "
        f"{summary['refused_per_s_after_sell_out']}/s refused after sell-out, oversold {checks['oversold']}, "
        f"missing {checks['missing']}")
    return summary


async def main_async(args: argparse.Namespace, running: Any, settings: Any) -> dict[str, Any]:
    api = running.api
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120),
                                     connector=aiohttp.TCPConnector(limit=64)) as s:
        say(f"registering {args.users} users + 1 owner through identity ({args.register_parallel} at a time)")
        t = time.perf_counter()
        users = await register(s, api, args.users + 1, args.register_parallel)
        say(f"registered in {time.perf_counter() - t:.1f}s")
        owner, users = users[0], users[1:]
        store = await post(s, f"{api}/stores", {"name": "Storm Shop", "slug": f"storm-{uuid.uuid4().hex[:8]}"},
                           owner["headers"])
        product = await post(s, f"{api}/stores/{store['id']}/products", {
            "name": "Limited sneaker", "sku": f"sneaker-{uuid.uuid4().hex[:6]}", "price_cents": 0, "currency": "EUR",
        }, owner["headers"])
        say("creating drops and slots through catalog and booking")
        hot = await setup_drop(s, api, owner, store, product["id"], "Hot slot", 1, args.hot_seats)
        spread = await setup_drop(s, api, owner, store, product["id"], "Twenty slots", args.slots, args.slot_seats)
        ceiling_slot = await setup_drop(s, api, owner, store, product["id"], "Ceiling", 1, 1_000_000)

    report: dict[str, Any] = {"users": args.users, "concurrency": args.concurrency, "replicas": args.replicas,
                              "batching": args.batching, "linger_ms": args.linger_ms,
                              "priorities": running.system.nice, "phases": []}
    for name, slot_ids, seats in (("hot slot", hot, args.hot_seats),
                                  (f"{args.slots} slots", spread, args.slots * args.slot_seats)):
        report["phases"].append(await run_phase(running, settings, [api], users, name, slot_ids, seats, args))
    report["slot_reads"] = await slot_reads(running, settings, api, spread, len(users), args.concurrency)

    if args.diagnostics:
        # The same storm with the event consumers of the other services stopped, then straight at
        # the booking replicas: how much of the two cores the downstream work and the gateway take.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
            niced = await setup_drop(s, api, owner, store, product["id"], "Hot, consumers niced", 1, args.hot_seats)
            quiet = await setup_drop(s, api, owner, store, product["id"], "Hot, consumers paused", 1, args.hot_seats)
            direct = await setup_drop(s, api, owner, store, product["id"], "Hot, direct", 1, args.hot_seats)
        consumers = ("audit", "notifications", "webhooks", "payments")
        for name in consumers:
            renice(running.system, name, 19)
        report["phases"].append(await run_phase(running, settings, [api], users,
                                                "hot slot, consumers at nice 19", niced, args.hot_seats, args))
        report["peak_rss_mb"] = peak_rss(running.system)
        for name in consumers:
            stop_process(running.system, name)
        say("stopped audit, notifications, webhooks and payments (their events wait in their queues)")
        report["phases"].append(await run_phase(running, settings, [api], users, "hot slot, consumers stopped",
                                                quiet, args.hot_seats, args))
        replicas = [p.url + "/api/v1" for p in running.system.procs if p.service == "booking"]
        report["phases"].append(await run_phase(running, settings, replicas, users,
                                                "hot slot, consumers stopped, no gateway", direct, args.hot_seats,
                                                args))

    report["ceiling_slot"] = ceiling_slot[0]
    return report


def print_report(r: dict[str, Any]) -> None:
    print("\n" + "=" * 78)
    print(f"DROP STORM  users={r['users']}  connections={r['concurrency']}  booking replicas={r['replicas']}  "
          f"group commit={'on' if r['batching'] else 'off'} (linger {r['linger_ms']} ms)")
    print("priorities: " + (", ".join(f"{k} at nice {v}" for k, v in r["priorities"].items()) or "all equal"))
    for p in r["phases"]:
        print(f"\n-- {p['phase']}: {p['requests']} requests for {p['seats']} seats")
        print(f"   accepted                   {p['accepted']}  ({p['accepted_per_s']}/s until sold out)")
        print(f"   time to sell out           {p['time_to_sell_out_s']} s")
        print(f"   accepted latency p50/95/99 {p['accepted_ms']['p50']} / {p['accepted_ms']['p95']} / "
              f"{p['accepted_ms']['p99']} ms")
        print(f"   refused latency p50/95/99  {p['refused_ms']['p50']} / {p['refused_ms']['p95']} / "
              f"{p['refused_ms']['p99']} ms")
        print(f"   refused after sell-out     {p['refused_after_sell_out']}  ({p['refused_per_s_after_sell_out']}/s)")
        print(f"   outcomes                   {p['outcomes']}")
        if p["errors"]:
            print(f"   errors                     {p['errors']}")
        print(f"   oversold {p['oversold']}   accepted-but-missing {p['missing']}   "
              f"invariant violations {len(p['invariant_violations'])}")
        print(f"   reserve transactions       {p['reserve_transactions']} (avg {p['avg_batch']} requests, "
              f"{p['avg_transaction_ms']} ms each)")
        print("   CPU % of one core          " + ", ".join(f"{k} {v}" for k, v in p["cpu_percent"].items()))
    if r.get("slot_reads"):
        sr = r["slot_reads"]
        print(f"\n-- slot reads (GET /slots/{{id}}, public availability): {sr['reads']} at {sr['reads_per_s']}/s, "
              f"p50/95/99 {sr['ms']['p50']} / {sr['ms']['p95']} / {sr['ms']['p99']} ms, statuses {sr['statuses']}")
        print("   CPU µs per read             " + ", ".join(f"{k} {v}" for k, v in sr["cpu_us_per_read"].items()
                                                            if v >= 5))
    c = r["db_ceiling"]
    print(f"\n-- database ceiling (one reservation per transaction, one hot row): {c['best']}/s "
          f"{c['per_connections']}")
    print(f"   hot slot through the gateway / database ceiling = {r['hot_slot_vs_db_ceiling']}")
    print("\n-- peak RSS (MB): " + ", ".join(f"{k} {v}" for k, v in sorted(r["peak_rss_mb"].items())))
    print("=" * 78)


def main() -> int:
    parser = argparse.ArgumentParser(prog="drop_storm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--hot-seats", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=20)
    parser.add_argument("--slot-seats", type=int, default=50)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--no-batching", dest="batching", action="store_false",
                        help="one transaction per reservation (group commit off)")
    parser.add_argument("--linger-ms", type=float, default=0.0,
                        help="let a group-commit batch fill this long before sending it")
    parser.add_argument("--register-parallel", type=int, default=16)
    parser.add_argument("--real-argon2", action="store_true", help="keep identity's production argon2 cost")
    parser.add_argument("--ceiling-seconds", type=float, default=4.0)
    parser.add_argument("--ceiling-levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--no-diagnostics", dest="diagnostics", action="store_false",
                        help="skip the extra hot-slot storms with the consumers stopped / without the gateway")
    parser.add_argument("--no-priorities", dest="priorities", action="store_false",
                        help="run every service at the same CPU priority (the launcher runs notifications, "
                             "webhooks and audit at the lowest CPU priority by default)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()

    from dropslot_kit.testing import drop_test_resources

    running, settings, _ = start(args)
    try:
        try:
            report = asyncio.run(main_async(args, running, settings))
            # VmHWM is each process's peak; stopped processes were read before they stopped.
            report["peak_rss_mb"] = {**report.get("peak_rss_mb", {}), **peak_rss(running.system)}
        finally:
            say("stopping the system")
            running.system.stop()
        # Measured with the system stopped: the database alone, nothing else competing for the CPU.
        say(f"database ceiling: one reservation per transaction on one hot row, {args.ceiling_seconds:.0f}s per level")
        report["db_ceiling"] = asyncio.run(
            db_ceiling(settings, report.pop("ceiling_slot"), args.ceiling_seconds, args.ceiling_levels))
        hot_rate = report["phases"][0]["accepted_per_s"] or 0.0
        report["hot_slot_vs_db_ceiling"] = round(hot_rate / report["db_ceiling"]["best"], 2)
    finally:
        with contextlib.suppress(Exception):
            drop_test_resources(settings)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    ok = all(p["oversold"] == 0 and p["missing"] == 0 and not p["invariant_violations"] for p in report["phases"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
