"""JSON Schema snapshots of every contract, so a contract change is a visible diff.

    python -m dropslot_contracts.snapshot          # check (exit 1 on drift)
    python -m dropslot_contracts.snapshot --write  # rewrite the committed snapshots
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .envelope import Envelope
from .registry import all_events

SNAPSHOT_DIR = Path(__file__).resolve().parents[2] / "schemas"


def current() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"envelope.json": Envelope.model_json_schema()}
    for cls in all_events():
        out[f"{cls.TYPE}.v{cls.VERSION}.json"] = cls.model_json_schema()
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def drift(directory: Path = SNAPSHOT_DIR) -> list[str]:
    """Names whose committed snapshot is missing, stale or orphaned."""
    problems = []
    now = current()
    for name, schema in now.items():
        path = directory / name
        if not path.exists():
            problems.append(f"missing snapshot: {name}")
        elif path.read_text() != render(schema):
            problems.append(f"contract changed without its snapshot: {name}")
    for path in directory.glob("*.json"):
        if path.name not in now:
            problems.append(f"snapshot of no contract: {path.name}")
    return problems


def write(directory: Path = SNAPSHOT_DIR) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    now = current()
    for path in directory.glob("*.json"):
        if path.name not in now:
            path.unlink()
    for name, schema in now.items():
        (directory / name).write_text(render(schema))


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
        print(f"wrote {len(current())} snapshots to {SNAPSHOT_DIR}")
    else:
        found = drift()
        print("\n".join(found) or "snapshots up to date")
        sys.exit(1 if found else 0)
