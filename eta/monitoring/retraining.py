"""When the weekly report says the model fell behind the world, and whether to retrain now.

A breach is drift of a feature the model leans on, MAE decay past a margin over the champion's own held-out
MAE, range coverage out of the gate's band, or orders running late: the point ETA is a median, so about half
the orders arrive after it; where far more do, overall or in one market, the world changed in a way the
features do not show (a change in one market of several hides in the overall MAE, and a market's own held-out
MAE, from two days of its orders, is too noisy a yardstick). A breach triggers retraining only when enough
orders with actual times arrived since the model's data ended (a model retrained on the same data learns
nothing new) and no retrain ran within the cool-down (one bad week must not retrain every hour). The retrained
model still has to pass the gate before it serves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import numpy as np

from eta.features.definitions import MODEL_FEATURES
from eta.model.training import EtaModel
from eta.settings import RetrainingSettings


@dataclass(frozen=True)
class RetrainDecision:
    trigger: bool
    breaches: list[str]
    held_back: str | None  # why a breach did not trigger

    @property
    def reason(self) -> str:
        if self.trigger:
            return "; ".join(self.breaches)
        return self.held_back or "no threshold crossed"

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "reason": self.reason}


def important_features(model: EtaModel, top: int) -> list[str]:
    """The `top` features by total gain in the model's trees: drift elsewhere moves its answers little."""
    gain = model.point.feature_importance(importance_type="gain")
    return [MODEL_FEATURES[i] for i in np.argsort(-gain)[:top] if gain[i] > 0]


def breaches(report: dict, champion_mae: float, important: list[str], config: RetrainingSettings,
             band: tuple[float, float]) -> list[str]:
    """What in the week's report crossed a threshold (empty: the model still fits the world)."""
    found = []
    drifted = [name for name in report["drifted_features"] if name in important]
    if drifted:
        found.append(f"drift of important features: {', '.join(drifted)}")
    if report["labelled_orders"] >= config.min_labelled_orders:
        mae, limit = report["mae_min"], champion_mae * (1 + config.mae_decay_margin)
        if mae > limit:
            found.append(f"MAE decayed: {mae:.2f} min vs {limit:.2f} (held-out {champion_mae:.2f} + {config.mae_decay_margin:.0%})")
        low, high = band
        coverage = report["interval_coverage_80"]
        if not low <= coverage <= high:
            found.append(f"range coverage {coverage:.3f} outside [{low}, {high}]")
    late = {"overall": (report["under_prediction_rate"], report["labelled_orders"])}
    late |= {f"market {market}": (numbers["under_prediction_rate"], numbers["labelled_orders"])
             for market, numbers in report["by_market"].items()}
    running_late = [f"{where} {rate:.3f}" for where, (rate, labelled) in late.items()
                    if labelled >= config.min_labelled_orders and rate > config.max_under_prediction_rate]
    if running_late:
        found.append(f"orders arriving after the ETA above {config.max_under_prediction_rate:.0%}: "
                     + ", ".join(running_late))
    return found


def decide(found: list[str], new_labelled_orders: int, last_retrain: datetime | None, now: datetime,
           config: RetrainingSettings) -> RetrainDecision:
    if not found:
        return RetrainDecision(False, [], None)
    if new_labelled_orders < config.min_new_labelled_orders:
        return RetrainDecision(False, found, f"only {new_labelled_orders} orders with actual times since the model's "
                                             f"data ended; retraining needs {config.min_new_labelled_orders}")
    if last_retrain is not None and now - last_retrain < timedelta(hours=config.cooldown_hours):
        return RetrainDecision(False, found, f"a retrain started at {last_retrain:%Y-%m-%d %H:%M} UTC, within the "
                                             f"{config.cooldown_hours:g} h cool-down")
    return RetrainDecision(True, found, None)
