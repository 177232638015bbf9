"""`make scenarios`: the feedback loop on simulated worlds, unchanged and changed; writes results/scenarios.json.

Every world is the simulator's (3 markets, `ETA_SCENARIOS_STORES` (60) stores, `ETA_SCENARIOS_ORDERS_PER_STORE_DAY`
(12) orders a store a day: ~5,000 a week, seed 7) in a namespace of its own, lived through the real loop by
`flows.scenarios`: orders through a real `bentoml serve` of EtaOrder, the ingest and features flows each simulated
day, the feedback flow (land, join, weekly Evidently report, decision) each week, retrains through the
`train-model/retrain` deployment served by a Prefect runner process, all through a Prefect server of the benchmark's.

- A world's first WARM_UP_DAYS days fill the store-history windows (28 days) before its first model's training
  window (`training.window_days`: 21 days); that model is trained and promoted, then the world is served. 21 days
  give the weekly report two whole reference weeks: with 14 (one week) the store-history features' week-to-week
  noise crossed the drift threshold on 3 of 10 unchanged weeks.
- The unchanged world lives `ETA_SCENARIOS_WEEKS` (10) weeks: every retrain it triggers is a false trigger.
- Each changed world changes on its first served day and lives two weeks: the first closed by the feedback flow
  (detection, decision, a retrain through the gate), the second served by the production model that left.
  Its days before the change are the unchanged world's, so `mae_before` is the unchanged world's same week.

MAEs are over the orders a change reaches (its market; the new stores; all orders for the menu change):
`mae_changed_old_model` the first changed week as served; `mae_changed_new_model` the retrained model on its
held-out days (the week's last two: changed days neither model learned from), with the old model on the same days
beside it (`holdout`), as the gate compares them; `next_week` the second week as served, and the old model on the
features it was served with.

Three processes live the worlds side by side (the unchanged world; rain and courier shortage; menu change and new
stores), sharing the Prefect server and the retrain runner. The retraining cool-down counts Prefect's real hours
while simulated weeks pass in minutes: it is 0 here. Redis: db 10 of the local server (ETA_SCENARIOS_REDIS_URL to
change); every namespace's online keys and prediction stream are deleted at the end. The data folder
`<data dir>/scenarios` is emptied at the start and kept: its Evidently workspace holds every week's report
(`evidently ui --workspace .eta/scenarios/evidently`), its `logs/` each process's log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from eta.settings import Settings

# The parts (below) run as child processes: they inherit the folder and the environment set here.
SCENARIOS_DIR = Path(os.environ.setdefault("ETA_SCENARIOS_DIR", str(Settings().data_path / "scenarios")))
os.environ.update({
    "ETA_DATA_DIR": str(SCENARIOS_DIR),
    "ETA_REDIS_URL": os.environ.get("ETA_SCENARIOS_REDIS_URL", "redis://127.0.0.1:6379/10"),
    "ETA_ONLINE_STORE": "redis",
    "BENTOML_HOME": str(SCENARIOS_DIR / "bentoml"),  # the worlds' models, apart from anyone else's
    "ETA_TRAINING__WINDOW_DAYS": "21",
    "ETA_RETRAINING__COOLDOWN_HOURS": "0",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # LightGBM's OpenMP threads spin while they wait for work: on a machine whose cores are busy with other work
    # the spinning competes with the work itself (a 14-day model took 61 s here, 1.5 s with passive waiting).
    "OMP_WAIT_POLICY": "passive",
})

import pandas as pd  # noqa: E402

from eta.settings import SimulationSettings, WorldChange, get_settings  # noqa: E402
from flows.prefect_api import prefect_api  # noqa: E402
from flows.scenarios import (  # noqa: E402
    DAY,
    drop_namespace,
    live_change,
    live_weeks,
    mae,
    open_world,
    reached,
    retrain_runner,
    week_answers,
)

RESULTS = Path(__file__).resolve().parent / "results" / "scenarios.json"
WARM_UP_DAYS = 28
FIRST_DAY = WARM_UP_DAYS + 21  # the first served day: a Monday
UNCHANGED_WEEKS = int(os.environ.get("ETA_SCENARIOS_WEEKS", 10))
SIMULATION = SimulationSettings(markets=3, stores=int(os.environ.get("ETA_SCENARIOS_STORES", 60)),
                                orders_per_store_day=float(os.environ.get("ETA_SCENARIOS_ORDERS_PER_STORE_DAY", 12)),
                                seed=7, start=date(2026, 8, 24), days=FIRST_DAY + 7 * max(UNCHANGED_WEEKS, 2) + 1)
CHANGES = {
    "rain": WorldChange(kind="rain", from_day=FIRST_DAY, market=1, size=0.4),
    "courier_shortage": WorldChange(kind="courier_shortage", from_day=FIRST_DAY, market=1, size=0.15),
    "menu_change": WorldChange(kind="menu_change", from_day=FIRST_DAY, size=0.3),
    "new_stores": WorldChange(kind="new_stores", from_day=FIRST_DAY, size=0.2),
}
UNCHANGED = "eta_scn_unchanged"
# Worlds lived side by side, one process each part: the unchanged world's weeks, and the changes two by two.
PARTS = [["unchanged"], ["rain", "courier_shortage"], ["menu_change", "new_stores"]]


def namespace(name: str) -> str:
    return f"eta_scn_{name}"


def live_part(names: list[str]) -> None:
    """One part's worlds, each opened and lived; its results to `<scenarios dir>/parts/<first name>.json`."""
    logs, results = SCENARIOS_DIR / "logs", {}
    for name in names:
        began = time.perf_counter()
        change = CHANGES.get(name)
        simulation = SIMULATION.model_copy(update={"changes": [change] if change else []})
        world, trained = open_world(namespace(name), simulation, FIRST_DAY, SCENARIOS_DIR / "batches" / name)
        monday = world.day(FIRST_DAY)
        if change is None:
            results[name] = {"weeks": live_weeks(world, monday, UNCHANGED_WEEKS, logs)}
        else:
            results[name] = {"change": change.model_dump(), **live_change(world, monday, logs)}
        results[name] |= {"first_model": trained["model"], "first_model_held_out_mae": trained["metrics"]["mae_min"],
                          "seconds": round(time.perf_counter() - began, 1)}
    path = SCENARIOS_DIR / "parts" / f"{names[0]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, default=str))


def main() -> None:
    began = time.perf_counter()
    shutil.rmtree(SCENARIOS_DIR, ignore_errors=True)
    settings = get_settings()
    logs = SCENARIOS_DIR / "logs"
    logs.mkdir(parents=True)
    try:
        with prefect_api(SCENARIOS_DIR / "prefect") as _, retrain_runner(logs / "retrain-runner.log"):
            outputs = [open(logs / f"part-{names[0]}.log", "wb") for names in PARTS]  # noqa: SIM115 - closed below
            parts = [subprocess.Popen([sys.executable, "-m", "benchmarks.scenarios", ",".join(names)], stdout=output,
                                      stderr=subprocess.STDOUT) for names, output in zip(PARTS, outputs)]
            failed = [names for names, part in zip(PARTS, parts) if part.wait() != 0]
            for output in outputs:
                output.close()
            if failed:
                raise RuntimeError(f"parts {failed} failed: see {logs}/part-*.log")
        parts_done = {}
        for names in PARTS:
            parts_done |= json.loads((SCENARIOS_DIR / "parts" / f"{names[0]}.json").read_text())
        # The days before a change are the unchanged world's: its change week, as served, is the change's "before".
        monday = pd.Timestamp(SIMULATION.start, tz="UTC") + FIRST_DAY * DAY
        unchanged_week = week_answers(settings.in_namespace(UNCHANGED), monday)
        scenarios = []
        for name, change in CHANGES.items():
            before = unchanged_week[reached(SIMULATION.model_copy(update={"changes": [change]}), unchanged_week)]
            outcome = parts_done[name]
            scenarios.append({"name": name, "drift_detected": outcome["drift_detected"],
                              "retrain_triggered": outcome["retrain_triggered"], "mae_before": mae(before),
                              "mae_changed_old_model": outcome["mae_changed_old_model"],
                              "mae_changed_new_model": outcome["mae_changed_new_model"], **outcome})
    finally:
        for name in ["unchanged", *CHANGES]:
            drop_namespace(settings.in_namespace(namespace(name)))
    weeks = parts_done["unchanged"]["weeks"]
    result = {
        "no_change_weeks": len(weeks),
        "false_triggers": sum(week["retrain_triggered"] for week in weeks),
        "report_s": round(float(pd.Series([week["report_s"] for week in weeks]).median()), 1),
        "scenarios": scenarios,
        "unchanged": parts_done["unchanged"],
        "settings": {"markets": SIMULATION.markets, "stores": SIMULATION.stores,
                     "orders_per_store_day": SIMULATION.orders_per_store_day, "seed": SIMULATION.seed,
                     "warm_up_days": WARM_UP_DAYS, "training_window_days": settings.training.window_days,
                     "first_served_day": str(monday.date()), "retraining": settings.retraining.model_dump(),
                     "drift_threshold": settings.monitoring.drift_threshold},
        "total_s": round(time.perf_counter() - began, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("unchanged", "scenarios")}, default=str))
    for scenario in scenarios:
        print(json.dumps({k: v for k, v in scenario.items() if k.startswith(("name", "mae", "drift", "retrain"))}))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        live_part(sys.argv[1].split(","))
    else:
        main()
