"""`make dev`: prepare the database and run every service behind the gateway.

    python -m dropslot_kit.dev [--booking-replicas N] [--no-migrate]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from .launcher import InfraUnavailable, System, check_infra, prepare_database
from .settings import KitSettings


def main() -> int:
    parser = argparse.ArgumentParser(prog="make dev")
    parser.add_argument("--booking-replicas", type=int,
                        default=int(os.environ.get("DROPSLOT_BOOKING_REPLICAS", "2")))
    parser.add_argument("--no-migrate", action="store_true")
    args = parser.parse_args()

    settings = KitSettings()
    try:
        check_infra(settings)
    except InfraUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    if not args.no_migrate:
        print("preparing the database ...", flush=True)
        prepare_database(settings)

    env = {"DROPSLOT_LOG_JSON": os.environ.get("DROPSLOT_LOG_JSON", "false")}
    env.setdefault("DROPSLOT_WEBHOOKS_ALLOWED_NETWORKS", os.environ.get(
        "DROPSLOT_WEBHOOKS_ALLOWED_NETWORKS", '["127.0.0.0/8","::1/128"]'))
    # Local receivers in development are plain http.
    env.setdefault("DROPSLOT_WEBHOOKS_ALLOW_HTTP", os.environ.get("DROPSLOT_WEBHOOKS_ALLOW_HTTP", "true"))
    system = System(env=env, booking_replicas=args.booking_replicas)
    system.plan()
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("starting: " + ", ".join(f"{p.name}:{p.port}" for p in system.procs), flush=True)
    system.start()
    try:
        system.wait_ready(90)
        gw = system.gateway.url
        print(f"\nDropSlot is up: gateway {gw}/api/v1  ·  docs {gw}/docs  ·  readiness {gw}/ready"
              "\nCtrl-C stops everything.\n", flush=True)
    except (TimeoutError, RuntimeError) as exc:
        print(f"start-up failed: {exc}", file=sys.stderr)
        system.stop()
        return 1
    while not stopping:
        for proc in system.procs:
            if proc.popen is not None and proc.popen.poll() is not None:
                print(f"{proc.name} exited with {proc.popen.returncode}; stopping", file=sys.stderr)
                stopping = True
        time.sleep(0.5)
    print("\nstopping ...", flush=True)
    system.stop()
    print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
