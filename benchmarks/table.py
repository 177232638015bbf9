"""Print a benchmark result file's runs as the Markdown table README quotes: `python -m benchmarks.table FILE`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ["target", "rate", "rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "errors", "degraded", "requests", "server_cpu_ms_per_request", "rps_per_core", "sender_late_p99_ms"]


def markdown(runs: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for run in runs:
        cells = ["saturation" if run[c] is None and c == "rate" else "" if run.get(c) is None else str(run[c])
                 for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1]).read_text())["runs"]))
