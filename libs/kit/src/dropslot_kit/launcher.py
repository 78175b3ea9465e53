"""Starts the whole system as local processes: what `make dev` runs and what the
end-to-end tests start (on free ports, with their own database and broker namespace)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from .settings import SERVICES_WITH_DB, KitSettings

BACKENDS = SERVICES_WITH_DB
DEFAULT_PORTS = {
    "gateway": 8000,
    "identity": 8001,
    "catalog": 8002,
    "booking": 8003,
    "payments": 8004,
    "notifications": 8005,
    "webhooks": 8006,
    "audit": 8007,
}


# On one shared host the request path (gateway, identity, catalog, booking, payments) comes first:
# the services that mostly consume events run at the lowest CPU priority and catch up once a
# burst is over (nice 19 still gets its share of whatever the request path leaves idle, which in
# a drop is plenty between bursts). Measured in a drop storm on 2 cores (bench/README.md): at
# nice 10 they still took a quarter of the machine while seats were being sold and the hot slot
# sold 387 seats/s; at nice 19, 682/s, against 711/s with them stopped. Across machines
# (compose, k8s) the same is said with CPU requests.
BACKGROUND_NICE = {"notifications": 19, "webhooks": 19, "audit": 19}


class InfraUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reachable(url: str, default_port: int, timeout: float = 1.5) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=timeout):
            return True
    except OSError:
        return False


HOW_TO_START = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "RabbitMQ": "rabbitmq-server -detached",
    "Redis": 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
}


def check_infra(settings: KitSettings) -> None:
    """Say which dependency is missing and how to start it, instead of a traceback later."""
    missing = []
    for name, url, port in (
        ("PostgreSQL", settings.admin_database_url, 5432),
        ("RabbitMQ", settings.rabbit_url, 5672),
        ("Redis", settings.redis_url, 6379),
    ):
        if not reachable(url, port):
            safe = urlsplit(url)
            where = f"{safe.hostname}:{safe.port or port}"
            missing.append(f"  - {name} is not reachable at {where}. Start it (e.g. `{HOW_TO_START[name]}`) "
                           f"or point DROPSLOT_* at a running one.")
    if missing:
        raise InfraUnavailable("DropSlot needs these services:\n" + "\n".join(missing))


def prepare_database(settings: KitSettings, *, log: IO[str] | None = None) -> None:
    from .bootstrap import bootstrap
    from .migrate import upgrade

    dbname = asyncio.run(bootstrap(settings))
    _say(log, f"database {dbname}: schemas and roles ready")
    for service in BACKENDS:
        upgrade(service, settings)
        _say(log, f"{service}: migrated")


def _say(log: IO[str] | None, msg: str) -> None:
    print(msg, file=log or sys.stdout, flush=True)


IDLE_CGROUP = "dropslot-background"


def _cpu_cgroup_dir() -> Path | None:
    """This process's cgroup in a cgroup-v1 `cpu` hierarchy (e.g. /sys/fs/cgroup/cpu/), if any.
    Only v1: there a cgroup of the cpu controller governs nothing but CPU, whereas moving a
    process in the unified (v2) hierarchy would move its memory and pids accounting too."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            for mount in (Path("/sys/fs/cgroup") / controllers, Path("/sys/fs/cgroup/cpu")):
                if (mount / "cgroup.procs").exists():
                    return mount / path.lstrip("/")
    return None


def _idle_cgroup(pid: int) -> str | None:
    """Move a process into a CPU cgroup marked idle (`cpu.idle` = 1, Linux 5.15+) beside the
    launcher's own: the scheduler runs it only on a core nothing else wants, and preempts it the
    moment something else wakes. Needs a writable cgroup-v1 cpu hierarchy (root); None if not."""
    parent = _cpu_cgroup_dir()
    if parent is None:
        return None
    group = parent / IDLE_CGROUP
    try:
        group.mkdir(exist_ok=True)
        idle = group / "cpu.idle"
        if not idle.exists():
            return None
        if idle.read_text().strip() != "1":
            idle.write_text("1\n")
        (group / "cgroup.procs").write_text(f"{pid}\n")  # every thread, and those to come
        return str(group)
    except OSError:
        return None


def lower_priority(pid: int, niceness: int) -> str:
    """Run a process (its threads, and those it starts later) at the lowest CPU priority the
    machine offers; says what was set.

    Best: an idle CPU cgroup (see `_idle_cgroup`): it gets only cores nothing else wants.
    Otherwise its threads' nice (and SCHED_IDLE at 19) and its session's autogroup: each service
    runs in its own session, and with the kernel's autogroups (most desktops and VMs) the CPU is
    first shared between sessions, then between threads inside one, so a thread's nice value
    alone would not weigh against the gateway or booking. Measured in a drop storm on 2 cores
    (bench/README.md): with the consumers at nice 19 + SCHED_IDLE in their autogroups they still
    took ~30 % of the machine mid-storm."""
    try:
        tasks = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        tasks = [pid]
    idle = niceness >= 19
    for task in tasks:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, task, niceness)
        if idle:
            with contextlib.suppress(OSError, AttributeError):
                os.sched_setscheduler(task, os.SCHED_IDLE, os.sched_param(0))
    said = f"threads at nice {niceness}" + (", SCHED_IDLE" if idle else "")
    if idle and os.environ.get("DROPSLOT_IDLE_CGROUP", "1") == "1":
        group = _idle_cgroup(pid)
        if group is not None:
            return f"{said}, in idle CPU cgroup {group}"
    autogroup = Path(f"/proc/{pid}/autogroup")
    try:
        autogroup.write_text(f"{niceness}\n")
        return f"{said}, {autogroup.read_text().strip()}"
    except OSError as exc:  # a kernel without autogroups: the threads' nice is what counts
        return f"{said}, autogroup not set ({exc})"


@dataclass
class Proc:
    name: str
    service: str
    port: int
    popen: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class System:
    env: dict[str, str] = field(default_factory=dict)
    booking_replicas: int = 2
    free_ports: bool = False
    log_dir: Path | None = None  # None: stream prefixed output to stdout
    gateway_port: int | None = None
    procs: list[Proc] = field(default_factory=list)
    nice: dict[str, int] = field(default_factory=lambda: dict(BACKGROUND_NICE))  # service -> niceness

    def plan(self) -> None:
        port = (lambda name: free_port()) if self.free_ports else None
        self.procs = []
        for service in BACKENDS:
            replicas = self.booking_replicas if service == "booking" else 1
            for i in range(replicas):
                p = port(service) if port else DEFAULT_PORTS[service] + 10 * i
                name = f"{service}-{i + 1}" if replicas > 1 else service
                self.procs.append(Proc(name, service, p))
        gw = self.gateway_port or (free_port() if self.free_ports else DEFAULT_PORTS["gateway"])
        self.procs.append(Proc("gateway", "gateway", gw))

    @property
    def gateway(self) -> Proc:
        return next(p for p in self.procs if p.service == "gateway")

    def service_urls(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for p in self.procs:
            if p.service != "gateway":
                out.setdefault(p.service, []).append(p.url)
        return out

    def _env_for(self, proc: Proc) -> dict[str, str]:
        env = {**os.environ, **self.env}
        identity = self.service_urls()["identity"][0]
        env.setdefault("DROPSLOT_JWKS_URL", f"{identity}/api/v1/auth/jwks.json")
        env.setdefault("DROPSLOT_PUBLIC_BASE_URL", self.gateway.url)
        env["DROPSLOT_INSTANCE"] = proc.name
        if proc.service == "gateway":
            env["DROPSLOT_UPSTREAMS"] = json.dumps(self.service_urls())
        return env

    @staticmethod
    def _command(proc: Proc) -> list[str]:
        if proc.service == "gateway":  # its own HTTP server (dropslot_gateway/server.py), not uvicorn
            return [sys.executable, "-m", "dropslot_gateway.server", "--host", "127.0.0.1", "--port", str(proc.port)]
        return [
            sys.executable, "-m", "uvicorn", f"dropslot_{proc.service}.main:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(proc.port), "--no-access-log",
            # uvicorn's httptools protocol, plus the app's direct routes (kit serving.py).
            "--loop", "uvloop", "--http", "dropslot_kit.serving:DirectHttpProtocol", "--log-level", "warning",
            "--timeout-graceful-shutdown", "5", "--timeout-keep-alive", "75",
            # Services take the caller from the gateway's X-Real-IP (kit request context), so
            # uvicorn's proxy-header rewrite is only a cost there (~3 % of a booking replica's CPU
            # in a storm), and in containers it never applied (their peer is not 127.0.0.1).
            "--no-proxy-headers",
        ]

    def start(self) -> None:
        if not self.procs:
            self.plan()
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        if "DROPSLOT_GATEWAY_PROOF_KEYS" not in {**os.environ, **self.env}:
            # The gateway's proof that it checked a token (kit auth): one key per started system,
            # known to its processes only.
            self.env["DROPSLOT_GATEWAY_PROOF_KEYS"] = json.dumps([secrets.token_urlsafe(32)])
        for proc in self.procs:
            cmd = self._command(proc)
            if self.log_dir is not None:
                proc.log_path = self.log_dir / f"{proc.name}.log"
                out = open(proc.log_path, "ab")  # noqa: SIM115  (closed with the process)
                proc.popen = subprocess.Popen(cmd, env=self._env_for(proc), stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True)
                out.close()
            else:
                proc.popen = subprocess.Popen(cmd, env=self._env_for(proc), stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              start_new_session=True)
                threading.Thread(target=_pump, args=(proc,), daemon=True).start()
            if self.nice.get(proc.service):
                lower_priority(proc.popen.pid, self.nice[proc.service])

    def wait_ready(self, timeout: float = 60.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.popen is not None and proc.popen.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}{self._tail(proc)}")
            try:
                with urllib.request.urlopen(self.gateway.url + "/ready", timeout=3) as resp:
                    body = json.loads(resp.read())
                    if resp.status == 200:
                        return body  # type: ignore[no-any-return]
            except urllib.error.HTTPError as exc:
                last = exc.read().decode(errors="replace")[:2000]
            except (OSError, ValueError) as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise TimeoutError(f"system not ready after {timeout:.0f}s; last /ready: {last}")

    def _tail(self, proc: Proc, lines: int = 40) -> str:
        if proc.log_path and proc.log_path.exists():
            return "\n--- " + proc.name + " log ---\n" + "\n".join(proc.log_path.read_text().splitlines()[-lines:])
        return ""

    def logs(self) -> str:
        return "\n".join(self._tail(p) for p in self.procs)

    def stop(self, timeout: float = 10.0) -> None:
        for proc in self.procs:
            if proc.popen is not None and proc.popen.poll() is None:
                try:
                    os.killpg(proc.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            if proc.popen is None:
                continue
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.popen.wait()

    def find(self, name: str) -> Proc:
        return next(p for p in self.procs if p.name == name)

    def restart(self, name: str) -> None:
        """Stop and start one process (fault tests)."""
        proc = self.find(name)
        if proc.popen is not None and proc.popen.poll() is None:
            os.killpg(proc.popen.pid, signal.SIGTERM)
            proc.popen.wait(10)
        procs, self.procs = self.procs, [proc]
        try:
            self.start()
        finally:
            self.procs = procs


_print_lock = threading.Lock()


def _pump(proc: Proc) -> None:
    assert proc.popen is not None and proc.popen.stdout is not None
    width = 15
    for raw in iter(proc.popen.stdout.readline, b""):
        line = raw.decode(errors="replace").rstrip()
        with _print_lock:
            print(f"{proc.name:<{width}}| {line}", flush=True)
