"""Send a burst of "reservation confirmed" mails through the real SmtpTransport to the in-process
dev catcher, the way the sender does during a drop, and print throughput and CPU per message.

    .venv/bin/python services/notifications/bench/send_burst.py [-n 1000] [-c 10] [--no-render]
                                                                [--catcher-process]

Each message is rendered (its own check-in token, so its own QR code) unless `--no-render`,
then sent with up to `-c` sends in flight (the sender's concurrency). By default sender and
catcher share this process, so the CPU figure covers both sides of the SMTP conversation plus
the catcher's file writes; with `--catcher-process` the catcher runs in a child process and
the sending side's CPU (what the notifications process spends against a real SMTP server) is
reported apart from the catcher's. No database or broker needed.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from dropslot_notifications.adapters.catcher import Mailbox, SmtpCatcher
from dropslot_notifications.adapters.channels import SmtpTransport
from dropslot_notifications.domain import messages as m
from dropslot_notifications.domain.model import Channel
from dropslot_notifications.rendering import Renderer

BASE = "http://bench.test"
DROP = m.DropInfo("Winter Sneaker Drop", "Air Max 1", "Kicks & Co",
                  [{"name": "Mitte", "address": "Torstr. 1, Berlin", "phone": "+4930123456",
                    "timezone": "Europe/Berlin"}])


def context(i: int) -> dict:
    snap = {
        "reservation_id": str(uuid.uuid4()), "slot_id": str(uuid.uuid4()), "drop_id": str(uuid.uuid4()),
        "store_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4()), "state": "CONFIRMED",
        "slot_start": "2026-11-24T14:00:00Z", "slot_end": "2026-11-24T14:30:00Z", "amount_cents": 2500,
        "currency": "EUR", "requires_payment": True, "expires_at": "2026-11-24T13:10:00Z",
        "drop_name": "Winter Sneaker Drop", "product_name": "Air Max 1",
        "qr_code_url": "/api/v1/reservations/r/qr.svg", "checkin_token": f"ck.{uuid.uuid4().hex}.sig{i}",
    }
    intent = m.reservation_intent("reservation_confirmed", snap, DROP, BASE, dedupe=None)
    return {**intent.payload, "user": {"name": f"Customer {i}", "email": f"c{i}@example.com"},
            "base_url": BASE, "notification_id": str(uuid.uuid4())}


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return r.ru_utime + r.ru_stime


async def serve_catcher(directory: str, keep: int) -> None:
    """The child of `--catcher-process`: print the port, catch mail until SIGTERM, print the
    number of SMTP connections."""
    catcher = SmtpCatcher(Mailbox(directory, keep=keep), port=0)
    await catcher.start()
    print(catcher.port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await catcher.stop()
    print(getattr(catcher, "connections", "?"), flush=True)  # "?": a catcher that does not count


def run(n: int, concurrency: int, render_each: bool, keep: int, catcher_process: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mail_dir = Path(tmp) / "mail"
        child = None
        if catcher_process:
            child = subprocess.Popen([sys.executable, __file__, "--serve-catcher", str(mail_dir), "--keep", str(keep)],
                                     stdout=subprocess.PIPE, text=True)
            assert child.stdout is not None
            port: int | None = int(child.stdout.readline())
        else:
            port = None
        asyncio.run(main(n, concurrency, render_each, keep, mail_dir, port, child))


async def main(n: int, concurrency: int, render_each: bool, keep: int, mail_dir: Path, port: int | None,
               child: subprocess.Popen[str] | None) -> None:
    renderer = Renderer()
    catcher = None
    if port is not None:

        def target() -> tuple[str, int]:
            return "127.0.0.1", port
    else:
        catcher = SmtpCatcher(Mailbox(mail_dir, keep=keep), port=0)
        await catcher.start()
        target = catcher.address
    kwargs = {"target": target, "sender": "DropSlot <no-reply@dropslot.local>", "start_tls": False}
    try:
        transport = SmtpTransport(**kwargs, pool_size=concurrency)  # type: ignore[call-arg]
    except TypeError:  # a transport without a pool
        transport = SmtpTransport(**kwargs)
    once = renderer.render("reservation_confirmed", Channel.EMAIL, context(0))
    sem = asyncio.Semaphore(concurrency)
    render_s = send_s = 0.0

    async def one(i: int) -> None:
        nonlocal render_s, send_s
        async with sem:
            t0 = time.perf_counter()
            msg = renderer.render("reservation_confirmed", Channel.EMAIL, context(i)) if render_each else once
            t1 = time.perf_counter()
            await transport.send(notification_id=uuid.uuid4(), template="reservation_confirmed",
                                 to=f"c{i}@example.com", message=msg)
            render_s += t1 - t0
            send_s += time.perf_counter() - t1

    child_cpu0 = child_cpu()
    wall0, cpu0 = time.perf_counter(), cpu()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall, used = time.perf_counter() - wall0, cpu() - cpu0
    await transport.close()
    if child is not None:
        child.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(child.communicate, timeout=30)
        last = out.split()[-1]
        connections: int | None = int(last) if last.isdigit() else None
        catcher_cpu: float | None = child_cpu() - child_cpu0  # its whole life, start-up included
    else:
        assert catcher is not None
        await catcher.stop()
        connections = getattr(catcher, "connections", None)
        catcher_cpu = None
    files = await asyncio.to_thread(lambda: len(list(mail_dir.glob("*.eml"))))

    where = "catcher in a child process" if child is not None else "catcher in this process"
    print(f"messages            {n} (concurrency {concurrency}, {'rendered each' if render_each else 'rendered once'},"
          f" {where})")
    print(f"wall                {wall:.2f} s  ->  {n / wall:.0f} messages/s")
    if catcher_cpu is None:
        print(f"CPU (whole process) {used:.2f} s  ->  {used / n * 1000:.2f} ms CPU per message")
    else:
        print(f"CPU sending side    {used:.2f} s  ->  {used / n * 1000:.2f} ms CPU per message")
        print(f"CPU catcher         {catcher_cpu:.2f} s  ->  {catcher_cpu / n * 1000:.2f} ms CPU per message"
              " (start-up included)")
    print(f"  render            {render_s / n * 1000:.2f} ms per message (wall, in the loop)")
    print(f"  send (await)      {send_s / n * 1000:.2f} ms per message (wall, includes waiting)")
    print(f"SMTP connections    {connections if connections is not None else 'not counted'}")
    print(f"mail folder         {files} .eml files (keep {keep})")


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # children that have been waited for
    return r.ru_utime + r.ru_stime


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=1000, help="messages (default 1000)")
    p.add_argument("-c", "--concurrency", type=int, default=10, help="sends in flight (default 10)")
    p.add_argument("--no-render", action="store_true", help="render one message and send it n times")
    p.add_argument("--keep", type=int, default=500, help="the catcher's mailbox keep (default 500)")
    p.add_argument("--catcher-process", action="store_true", help="run the catcher in a child process")
    p.add_argument("--serve-catcher", metavar="DIR", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve_catcher:
        asyncio.run(serve_catcher(a.serve_catcher, a.keep))
    else:
        run(a.n, a.concurrency, not a.no_render, a.keep, a.catcher_process)
