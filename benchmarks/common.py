"""Shared benchmark plumbing: machine description and the results JSON/markdown every script writes."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "gpu": gpu, "python": sys.version.split()[0]}


def write_results(name: str, results: dict, targets: list[dict], table_md: str) -> Path:
    """Write results/<name>.json (with `targets`, missed ones included) and results/<name>.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "results": results,
        "targets": targets,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2))
    lines = [f"# {name}", "", f"`{record['command']}` on {record['machine']['cores']} cores "
             f"({record['machine']['cpu']}), {record['date']}", "", table_md, "", "| target | value | goal | met |",
             "|---|---|---|---|"]
    lines += [f"| {t['name']} | {t['value']} | {t['target']} | {'yes' if t['met'] else '**no**'} |" for t in targets]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    return path
