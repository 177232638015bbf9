"""Models in the BentoML model store, the production pointer, and the promotion gate."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import bentoml
import lightgbm as lgb
from bentoml.exceptions import NotFound

from eta.features import MODEL_FEATURES
from eta.settings import Settings

MODEL_FILE = "model.txt"


def save_model(booster: lgb.Booster, metadata: dict[str, object], settings: Settings) -> str:
    """Store a trained model with its metrics, data window and feature service; returns its tag."""
    with bentoml.models.create(
        settings.model_name,
        labels={"feature_service": settings.feature_service, "project": settings.feast_project},
        metadata={**metadata, "features": MODEL_FEATURES, "feature_service": settings.feature_service},
    ) as model:
        booster.save_model(model.path_of(MODEL_FILE))
    return str(model.tag)


def load_booster(tag: str) -> lgb.Booster:
    return lgb.Booster(model_file=bentoml.models.get(tag).path_of(MODEL_FILE))


def model_metadata(tag: str) -> dict[str, object]:
    return dict(bentoml.models.get(tag).info.metadata)


def _pointer(settings: Settings):
    return settings.data_path / "production_model.json"


def production_tag(settings: Settings) -> str | None:
    """The tag of the model in production, or None before the first promotion."""
    pointer = _pointer(settings)
    if not pointer.exists():
        return None
    tag = json.loads(pointer.read_text())["tag"]
    try:
        bentoml.models.get(tag)
    except NotFound:
        return None
    return tag


def promote(tag: str, settings: Settings) -> None:
    pointer = _pointer(settings)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(json.dumps({"tag": tag}))
    os.replace(tmp, pointer)


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    challenger_mae_min: float
    champion_mae_min: float | None
    baseline_mae_min: float
    margin_min: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def gate(challenger_mae: float, champion_mae: float | None, baseline_mae: float, margin: float) -> GateDecision:
    """Promote only a challenger that beats the naive baseline and the champion (by `margin`) on one window."""
    if challenger_mae >= baseline_mae:
        promote, reason = False, f"challenger MAE {challenger_mae:.2f} does not beat the naive median {baseline_mae:.2f}"
    elif champion_mae is None:
        promote, reason = True, "no model in production; challenger beats the naive median"
    elif challenger_mae < champion_mae - margin:
        promote, reason = True, f"challenger MAE {challenger_mae:.2f} beats champion {champion_mae:.2f} by more than {margin}"
    else:
        promote, reason = False, f"challenger MAE {challenger_mae:.2f} does not beat champion {champion_mae:.2f} by {margin}"
    return GateDecision(promote, reason, challenger_mae, champion_mae, baseline_mae, margin)
