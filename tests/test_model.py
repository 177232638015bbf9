"""Model tests: the gate's decisions, the registry round trip and rollback, behaviour of trained models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eta.features.definitions import MODEL_FEATURES, model_inputs
from eta.model.behaviour import LONGER_NEVER_SOONER, behaviour_failures
from eta.model.registry import (
    gate,
    list_models,
    load_model,
    model_metadata,
    production_tag,
    promote,
    rollback,
    save_model,
)
from eta.model.training import LABEL, EtaModel, split_by_time, train_eta_model
from eta.orders.schema import delivery_minutes
from eta.orders.simulate import simulate_orders
from eta.settings import GateSettings, SimulationSettings, TrainingSettings
from tests.helpers import fixed_store_history

GATE = GateSettings(mae_margin=0.2, market_regression_limit=0.05, coverage_band=(0.75, 0.85))
FAST = TrainingSettings(num_boost_round=60, holdout_days=2, calibration_days=2)


def _scored(mae: float, coverage: float = 0.8, markets: dict[str, float] | None = None) -> dict:
    by_market = {m: {"mae_min": v, "n": 100, "n_orders": 100, "interval_coverage_80": coverage}
                 for m, v in (markets or {"1": mae, "2": mae}).items()}
    return {"mae_min": mae, "interval_coverage_80": coverage, "by_market": by_market}


def test_first_model_is_promoted_only_if_it_beats_the_naive_median():
    assert gate(_scored(8.0), None, baseline_mae=12.0, behaviour=[], config=GATE).promote
    refused = gate(_scored(12.5), None, baseline_mae=12.0, behaviour=[], config=GATE)
    assert not refused.promote and "beats naive median" in refused.reason


def test_challenger_must_beat_the_champion_by_the_margin():
    assert gate(_scored(7.0), _scored(8.0), 12.0, [], GATE).promote
    close = gate(_scored(7.9), _scored(8.0), 12.0, [], GATE)
    assert not close.promote and close.reason == "refused: beats champion"
    assert {c["check"]: c["passed"] for c in close.checks}["no market regresses"]


def test_a_market_that_gets_worse_blocks_promotion_even_when_the_total_improves():
    challenger = _scored(7.0, markets={"1": 5.0, "2": 9.0})
    decision = gate(challenger, _scored(8.0, markets={"1": 8.0, "2": 8.0}), 12.0, [], GATE)
    assert not decision.promote and "no market regresses" in decision.reason
    assert "market 2" in next(c["detail"] for c in decision.checks if c["check"] == "no market regresses")


def test_a_champion_on_other_features_is_named_in_the_record_not_passed_off_as_absent():
    decision = gate(_scored(8.0), None, 12.0, [], GATE, incomparable_champion="eta_model:old")
    assert decision.promote and decision.reason == "passed every check"
    assert "eta_model:old" in next(c["detail"] for c in decision.checks if c["check"] == "champion comparable")
    assert not gate(_scored(12.5), None, 12.0, [], GATE, incomparable_champion="eta_model:old").promote


def test_uncalibrated_range_or_broken_behaviour_blocks_promotion():
    assert "interval coverage in band" in gate(_scored(7.0, coverage=0.6), None, 12.0, [], GATE).reason
    assert "behavioural tests" in gate(_scored(7.0), None, 12.0, ["drive shortened ETA"], GATE).reason


@pytest.fixture(scope="module")
def simulated_split():
    orders = simulate_orders(SimulationSettings(markets=2, stores=30, days=10, seed=21))
    frame = fixed_store_history(orders.assign(order_id=[str(i) for i in range(len(orders))], **{LABEL: delivery_minutes(orders)}))
    return split_by_time(frame, FAST)


def test_range_is_calibrated_on_its_own_window_and_contains_the_point(simulated_split):
    model = train_eta_model(simulated_split, FAST)
    point, lower, upper = model.predict(model_inputs(simulated_split.holdout))
    assert (lower <= point).all() and (point <= upper).all()
    actual = simulated_split.holdout[LABEL].to_numpy()
    assert 0.72 <= np.mean((actual >= lower) & (actual <= upper)) <= 0.88
    assert simulated_split.calibration["created_at"].max() < simulated_split.holdout["created_at"].min()
    assert simulated_split.train["created_at"].max() < simulated_split.calibration["created_at"].min()


def test_monotone_constraints_hold_on_every_row(simulated_split):
    """Longer drive, longer placement, bigger basket, busier market: never an earlier ETA."""
    model = train_eta_model(simulated_split, FAST)
    inputs = model_inputs(simulated_split.holdout)
    assert behaviour_failures(model, inputs) == []
    for feature, step in LONGER_NEVER_SOONER:
        bumped = inputs.copy()
        bumped[:, MODEL_FEATURES.index(feature)] += step
        assert (model.predict(bumped)[0] >= model.predict(inputs)[0] - 1e-9).all(), feature


def test_behaviour_check_catches_a_model_that_breaks_it(simulated_split):
    """A model trained without constraints on data where longer drives look faster must fail the check."""
    import lightgbm as lgb

    train = simulated_split.train
    inputs = model_inputs(train)
    drive = inputs[:, MODEL_FEATURES.index("estimated_store_to_consumer_driving_duration")]
    booster = lgb.train({"objective": "regression", "verbosity": -1}, lgb.Dataset(inputs, label=np.log(200 - drive / 20)), 30)
    failures = behaviour_failures(EtaModel(booster, -0.2, 0.2), model_inputs(simulated_split.holdout))
    assert any("estimated_store_to_consumer_driving_duration" in f for f in failures)


def test_registry_lists_promotes_and_rolls_back(local_settings, simulated_split):
    model = train_eta_model(simulated_split, FAST)
    assert production_tag(local_settings) is None and list_models(local_settings) == []
    first = save_model(model, {"metrics": {"mae_min": 9.0}, "champion": {"tag": None}}, local_settings, {"gate": "passed"})
    second = save_model(model, {"metrics": {"mae_min": 8.0}}, local_settings, {"gate": "passed"})
    assert production_tag(local_settings) is None, "saving is not promoting"
    promote(first, local_settings)
    promote(second, local_settings)
    listed = list_models(local_settings)
    assert [row["tag"] for row in listed] == [second, first]
    assert [row["production"] for row in listed] == [True, False]
    assert rollback(local_settings) == first and production_tag(local_settings) == first
    with pytest.raises(ValueError, match="no earlier production model"):
        rollback(local_settings)
    inputs = model_inputs(simulated_split.holdout)
    np.testing.assert_array_equal(load_model(first).predict(inputs), model.predict(inputs))
    meta = model_metadata(first)
    assert meta["features"] == MODEL_FEATURES and meta["feature_service"] == local_settings.feature_service
    assert meta["code_version"] and meta["log_range"] == [model.log_lower, model.log_upper]


def test_promoting_an_unknown_tag_is_refused(local_settings):
    from eta.errors import UsageError

    with pytest.raises(UsageError, match="no model .*doesnotexist.* in the model store"):
        promote(f"{local_settings.model_name}:doesnotexist", local_settings)


# (change, share of orders allowed a shorter ETA): the basket's value (subtotal) is not constrained, as a
# pricier basket is not always a slower one, so a few orders may move either way when it triples.
BIGGER = {
    "drive +10 min": (lambda rows: {"estimated_store_to_consumer_driving_duration": rows["estimated_store_to_consumer_driving_duration"] + 600}, 0.0),
    "basket x3": (lambda rows: {c: rows[c] * 3 for c in ("total_items", "num_distinct_items", "subtotal")}, 0.05),
}


@pytest.mark.parametrize("change,shorter_allowed", BIGGER.values(), ids=BIGGER.keys())
def test_promoted_model_gives_longer_etas_for_longer_drives_and_bigger_baskets(pipeline_result, change, shorter_allowed):
    """Behavioural check on the model the pipeline promoted: averaged over real rows, not one lucky row."""
    from eta.orders.ingest import read_history
    from eta.settings import get_settings

    settings = get_settings()
    model = load_model(production_tag(settings))
    rows = fixed_store_history(read_history(settings).tail(300))
    base = model.predict(model_inputs(rows))[0]
    more = model.predict(model_inputs(rows.assign(**change(rows))))[0]
    assert np.mean(more < base - 1e-9) <= shorter_allowed and (more - base).mean() > 1.0
    # Measured on orders the model never trained on: the held-out window, the last `holdout_days` of the history.
    history = read_history(settings)["created_at"]
    held_out = history[history >= history.max() - pd.Timedelta(days=settings.training.holdout_days)]
    holdout_start = pd.Timestamp(model_metadata(production_tag(settings))["window"]["holdout_start"])
    assert holdout_start == held_out.min() and rows["created_at"].min() >= holdout_start
