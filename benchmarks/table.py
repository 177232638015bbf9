"""Print a benchmark result file's runs as the Markdown table README quotes: `python -m benchmarks.table FILE`.

A row measured over several repeats shows its median with the spread beside it, `median (min-max)`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ["target", "rate", "rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "errors", "degraded", "requests",
           "server_cpu_ms_per_request", "rps_per_core", "sender_late_p99_ms", "sender_late_max_ms", "max_from_send_ms",
           "repeats"]


def cell(run: dict, column: str) -> str:
    value = run.get(column)
    if column == "rate" and value is None:
        return "saturation"
    if value is None:
        return ""
    spread = (run.get("spread") or {}).get(column)
    if spread and run.get("repeats", 1) > 1:
        return f"{value} ({spread[0]}-{spread[1]})"
    return str(value)


def markdown(runs: list[dict]) -> str:
    columns = [c for c in COLUMNS if any(run.get(c) is not None for run in runs)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for run in runs:
        lines.append("| " + " | ".join(cell(run, c) for c in columns) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1]).read_text())["runs"]))
