"""Model tests: the gate's decisions, the registry round trip, behaviour of a trained model."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from eta.features import MODEL_FEATURES, model_inputs
from eta.registry import gate, load_booster, model_metadata, production_tag, promote, save_model
from eta.settings import SimulationSettings
from eta.simulate import simulate_orders


def test_first_model_is_promoted_only_if_it_beats_the_naive_median():
    assert gate(8.0, None, baseline_mae=12.0, margin=0.0).promote
    refused = gate(12.5, None, baseline_mae=12.0, margin=0.0)
    assert not refused.promote and "naive median" in refused.reason


def test_challenger_must_beat_the_champion_by_the_margin():
    assert gate(7.0, 8.0, baseline_mae=12.0, margin=0.5).promote
    assert not gate(7.8, 8.0, baseline_mae=12.0, margin=0.5).promote
    tie = gate(8.0, 8.0, baseline_mae=12.0, margin=0.0)
    assert not tie.promote and tie.champion_mae_min == 8.0 and tie.challenger_mae_min == 8.0


def test_registry_round_trip_and_production_pointer(local_settings):
    orders = simulate_orders(SimulationSettings(markets=1, stores=5, days=3, seed=9))
    X = model_inputs(orders.assign(store_orders_7d=1.0, store_mean_delivery_min_7d=1.0, store_p90_delivery_min_7d=1.0))
    booster = lgb.train({"objective": "l1", "verbosity": -1}, lgb.Dataset(X, label=np.arange(len(X)) % 50), 5)

    assert production_tag(local_settings) is None
    tag = save_model(booster, {"metrics": {"mae_min": 1.0}}, local_settings)
    assert production_tag(local_settings) is None, "saving is not promoting"
    promote(tag, local_settings)
    assert production_tag(local_settings) == tag
    np.testing.assert_array_equal(load_booster(tag).predict(X), booster.predict(X))
    meta = model_metadata(tag)
    assert meta["features"] == MODEL_FEATURES and meta["feature_service"] == local_settings.feature_service
    assert meta["metrics"] == {"mae_min": 1.0}


@pytest.mark.parametrize("column,step", [("estimated_store_to_consumer_driving_duration", 600.0), ("total_items", 8.0)])
def test_trained_model_gives_longer_etas_for_longer_drives_and_bigger_baskets(pipeline_result, column, step):
    """Behavioural check on the model the pipeline promoted: averaged over real rows, not one lucky row."""
    from eta.ingest import read_history
    from eta.settings import get_settings

    settings = get_settings()
    booster = load_booster(production_tag(settings))
    rows = read_history(settings).tail(300).assign(
        store_orders_7d=20.0, store_mean_delivery_min_7d=45.0, store_p90_delivery_min_7d=60.0
    )
    base = booster.predict(model_inputs(rows))
    more = booster.predict(model_inputs(rows.assign(**{column: rows[column] + step})))
    assert (more - base).mean() > 1.0
