"""Wall time of `pipelines demo` (fresh output folder) against the 10-minute budget of the core issue.

    python benchmarks/core_demo.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

BUDGET_S = 600.0


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipelines", "demo", "--out", tmp], check=True,
                       stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        stages = json.loads((Path(tmp) / "demo_metrics.json").read_text())
    per_stage = {name: {"seconds": s["seconds"], **s["metrics"]} for name, s in stages.items()}
    rows = "\n".join(f"| {name} | {v['seconds']} |" for name, v in per_stage.items())
    table = f"| stage | seconds |\n|---|---|\n{rows}\n| **total (incl. start-up)** | {seconds:.1f} |"
    print(table)
    print(f"demo: {seconds:.1f} s = {seconds / BUDGET_S:.2f} of the {BUDGET_S:.0f} s budget")
    write_results("core_demo", {"total_seconds": round(seconds, 1), "stages": per_stage},
                  [{"name": "make demo wall time on 2 cores (s)", "value": round(seconds, 1), "target": f"< {BUDGET_S:.0f}",
                    "met": seconds < BUDGET_S}], table)


if __name__ == "__main__":
    main()
