"""The weekly report flow's work once, in a process of its own: `python -m benchmarks.timed_report NAMESPACE WEEK`.

Prints one JSON line: the work's wall time (reading the week's landed log and the production model's training
reference, the Evidently snapshot into the workspace, the HTML) and this process's peak resident memory (VmHWM
in /proc/self/status, so imports included; also given as measured before the work). `benchmarks.monitoring`
runs it, so the report's memory is not mixed with the benchmark's own. Not getrusage's ru_maxrss: it survives
exec, so a child forked from a big parent starts with the parent's peak; VmHWM belongs to the new program.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from eta.settings import get_settings
from flows.monitor import build_weekly_report


def _peak_mb() -> float:
    """This program's peak resident memory so far (Linux: VmHWM, in kB)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return round(int(line.split()[1]) / 1024, 1)


def main(namespace: str, week: str) -> None:
    settings = get_settings().in_namespace(namespace)
    before = _peak_mb()
    began = time.perf_counter()
    report = build_weekly_report.fn(settings, week)
    seconds = time.perf_counter() - began
    print(json.dumps({
        "report_s": round(seconds, 2), "report_peak_mb": _peak_mb(), "peak_mb_before_report": before,
        **{name: report[name] for name in ("week", "orders", "sampled_orders", "labelled_orders", "reference_orders",
                                           "reference_sampled", "mae_min", "interval_coverage_80", "drift_share",
                                           "drifted_features", "html", "snapshot")},
    }, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:3])
