"""The latest drift verdict, in one small file beside the reports: what the services export as `eta_drift_flagged`.

Evidently's own JSON is large and named per run; on-call needs one bit, when it was decided, for which week and
against which model. The weekly report (`flows.monitor`, run by the feedback loop every Monday) replaces this
file whole; a service reads it when scraped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from eta.settings import Settings
from eta.storage import replace_atomically


def drift_status_path(settings: Settings) -> Path:
    return settings.reports_path / "drift_status.json"


def write_drift_status(path: Path, summary: dict[str, object]) -> None:
    """Keep the verdict of a finished weekly report: drift_detected, drifted_columns, model, html, week."""
    status = {"drift_detected": bool(summary["drift_detected"]), "drifted_columns": summary["drifted_columns"],
              "model": summary["model"], "html": summary["html"], "week": summary["week"], "decided_at": time.time()}
    replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(status)))


def read_drift_status(path: Path) -> dict[str, object] | None:
    """The latest verdict, or None before the first report."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
