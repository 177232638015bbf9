"""Models in the BentoML model store, the production pointer with its history, and the promotion gate."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import bentoml
import lightgbm as lgb
from bentoml.exceptions import InvalidArgument, NotFound
from scipy.stats import binomtest

from eta.errors import UsageError, UserError
from eta.features.definitions import MODEL_FEATURES
from eta.model.training import EtaModel
from eta.settings import PROJECT_ROOT, GateSettings, Settings
from eta.storage import replace_atomically

MODEL_FILE = "point.txt"


def code_version() -> str:
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _storable(value: object) -> object:
    """BentoML metadata holds basic types only: drop the Nones (an absent champion, an unset option)."""
    if isinstance(value, dict):
        return {str(k): _storable(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_storable(v) for v in value]
    return value


def save_model(model: EtaModel, metadata: dict[str, object], settings: Settings, labels: dict[str, str]) -> str:
    """Store a model with everything needed to explain it later; returns its tag."""
    with bentoml.models.create(
        settings.model_name,
        labels={"feature_service": settings.feature_service, "project": settings.feast_project, **labels},
        metadata={
            **_storable(metadata),
            "features": MODEL_FEATURES,
            "feature_service": settings.feature_service,
            "log_range": [model.log_lower, model.log_upper],
            "market_log_range": {f"{market:g}": list(offsets) for market, offsets in model.market_log_range.items()},
            "typical_order": model.typical_order,
            "code_version": code_version(),
        },
    ) as stored:
        model.point.save_model(stored.path_of(MODEL_FILE))
    return str(stored.tag)


def load_model(tag: str) -> EtaModel:
    stored = bentoml.models.get(tag)
    return load_model_from(Path(stored.path), stored.info.metadata)


def load_model_from(path: Path, metadata: dict[str, object]) -> EtaModel:
    """A stored model from its folder and metadata (also how a Bento loads the model it packs).

    A model stored before ranges were calibrated per market has no `market_log_range`: every market gets its global range.
    """
    log_lower, log_upper = metadata["log_range"]
    typical = {name: float(value) for name, value in dict(metadata.get("typical_order", {})).items()}
    by_market = {float(market): (float(low), float(high))
                 for market, (low, high) in dict(metadata.get("market_log_range", {})).items()}
    return EtaModel(lgb.Booster(model_file=str(path / MODEL_FILE)), float(log_lower), float(log_upper), typical, by_market)


def model_metadata(tag: str) -> dict[str, object]:
    return dict(bentoml.models.get(tag).info.metadata)


def list_models(settings: Settings) -> list[dict[str, object]]:
    """Every stored model of this namespace, newest first, with its key numbers and gate decision."""
    try:
        stored = bentoml.models.list(settings.model_name)
    except NotFound:
        return []
    production = production_tag(settings)
    rows = []
    for model in sorted(stored, key=lambda m: m.info.creation_time, reverse=True):
        meta = model.info.metadata
        metrics = meta.get("metrics", {})
        rows.append({
            "tag": str(model.tag),
            "created": model.info.creation_time.isoformat(timespec="seconds"),
            "production": str(model.tag) == production,
            "mae_min": metrics.get("mae_min"),
            "interval_coverage_80": metrics.get("interval_coverage_80"),
            "gate": meta.get("gate", {}).get("promote"),
            "holdout": f"{meta.get('window', {}).get('holdout_start')} .. {meta.get('window', {}).get('holdout_end')}",
        })
    return rows


def _pointer(settings: Settings) -> Path:
    return settings.project_path / "production_model.json"


def _read_pointer(settings: Settings) -> dict[str, object]:
    pointer = _pointer(settings)
    return json.loads(pointer.read_text()) if pointer.exists() else {"tag": None, "previous": []}


def _write_pointer(settings: Settings, state: dict[str, object]) -> None:
    replace_atomically(_pointer(settings), lambda tmp: tmp.write_text(json.dumps(state)))


def production_tag(settings: Settings) -> str | None:
    """The tag of the model in production, or None before the first promotion."""
    tag = _read_pointer(settings)["tag"]
    if tag is None:
        return None
    try:
        bentoml.models.get(tag)
    except NotFound:
        return None
    return tag


def require_production_tag(settings: Settings, needed_for: str) -> str:
    """The production model's tag; a namespace without one yet is the user's to fix (train first)."""
    tag = production_tag(settings)
    if tag is None:
        namespace = settings.feast_project
        raise UserError(f"namespace {namespace!r} has no production model yet ({needed_for}), expected one "
                        f"trained and promoted first: eta train --namespace {namespace}")
    return tag


def promote(tag: str, settings: Settings) -> None:
    """Make `tag` the production model; the one it replaces is remembered for rollback."""
    try:
        bentoml.models.get(tag)  # refuse a tag the store does not hold
    except (NotFound, InvalidArgument, ValueError) as error:  # ValueError: not a tag at all
        raise UsageError(f"no model {tag!r} in the model store, expected a tag `eta models list --namespace "
                         f"{settings.feast_project}` shows, such as {settings.model_name}:<version>") from error
    state = _read_pointer(settings)
    if state["tag"] == tag:
        return
    previous = [state["tag"], *state["previous"]] if state["tag"] else list(state["previous"])
    _write_pointer(settings, {"tag": tag, "previous": previous})


def rollback(settings: Settings) -> str:
    """Put the previous production model back; returns its tag."""
    state = _read_pointer(settings)
    if not state["previous"]:
        raise UserError(f"no earlier production model to roll back to in namespace {settings.feast_project!r}, "
                        "expected a namespace whose production model replaced another")
    restored, *older = state["previous"]
    _write_pointer(settings, {"tag": restored, "previous": older})
    return restored


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    checks: list[dict[str, object]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def gate(
    challenger: dict[str, object],
    champion: dict[str, object] | None,
    baseline_mae: float,
    behaviour: list[str],
    config: GateSettings,
    incomparable_champion: str | None = None,
) -> GateDecision:
    """Promote only a challenger that passes every check, each scored on the same held-out window.

    `challenger` and `champion` are `training.score` results; `behaviour` lists broken behaviours.
    `incomparable_champion` names a production model that could not be scored (trained on other features):
    the challenger then answers to the baselines only, and the record says so.
    """
    checks = []

    def check(name: str, passed: bool, detail: str) -> None:
        checks.append({"check": name, "passed": bool(passed), "detail": detail})

    mae = float(challenger["mae_min"])
    check("beats naive median", mae < baseline_mae, f"MAE {mae:.2f} vs {baseline_mae:.2f}")
    if incomparable_champion is not None:
        check("champion comparable", True, f"{incomparable_champion} uses other features: not scored, baselines only")
    if champion is not None:
        champion_mae = float(champion["mae_min"])
        check(
            "beats champion",
            mae < champion_mae - config.mae_margin,
            f"MAE {mae:.2f} vs champion {champion_mae:.2f} - margin {config.mae_margin}",
        )
        regressed = [
            f"market {market}: {row['mae_min']:.2f} vs {champion['by_market'][market]['mae_min']:.2f}"
            for market, row in challenger["by_market"].items()
            if market in champion["by_market"]
            and row["mae_min"] > champion["by_market"][market]["mae_min"] * (1 + config.market_regression_limit)
        ]
        check("no market regresses", not regressed, "; ".join(regressed) or f"all within {config.market_regression_limit:.0%}")
    low, high = config.coverage_band
    coverage = float(challenger["interval_coverage_80"])
    check("interval coverage in band", low <= coverage <= high, f"{coverage:.3f} in [{low}, {high}]")
    judged = {market: row for market, row in challenger["by_market"].items() if row["n"] >= config.min_market_orders}
    bounds = {market: _coverage_interval(row, config.market_coverage_confidence) for market, row in judged.items()}
    missed = [f"market {m}: {judged[m]['interval_coverage_80']:.3f} ({judged[m]['n']} orders)"
              for m, (bottom, top) in bounds.items() if top < low or bottom > high]
    check("interval coverage in band per market", not missed, "; ".join(missed)
          or f"{len(judged)} markets with >= {config.min_market_orders} orders in [{low}, {high}]"
             f" (at {config.market_coverage_confidence:.0%} confidence)")
    check("behavioural tests", not behaviour, "; ".join(behaviour) or "all pass")
    failed = [c["check"] for c in checks if not c["passed"]]
    reason = "passed every check" if not failed else "refused: " + ", ".join(failed)
    if champion is None and incomparable_champion is None and not failed:
        reason = "no model in production; passed every check"
    return GateDecision(promote=not failed, reason=reason, checks=checks)


def _coverage_interval(row: dict[str, float], confidence: float) -> tuple[float, float]:
    """The Wilson interval of a market's held-out coverage, given how few orders it has.

    At 100 orders the observed share of a perfectly calibrated 80% range has a standard deviation of 4 points,
    as wide as the band's half: judging the raw share would refuse good models at random.
    """
    covered = round(row["interval_coverage_80"] * row["n"])
    interval = binomtest(covered, int(row["n"])).proportion_ci(confidence_level=confidence, method="wilson")
    return interval.low, interval.high
