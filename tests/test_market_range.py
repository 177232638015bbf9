"""The 80% range per market: calibrated in each market, checked by the gate, stored with the model, served.

The data: simulated orders whose delivery time is a known function of the order times log-normal noise,
twice as wide in market 2 as in market 1, so one global range would over-cover market 1 and miss market 2.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import pytest

from eta.features.definitions import MARKET_STATE_FEATURES, ORDER_REQUEST_FIELDS, STORE_HISTORY_FEATURES, model_inputs
from eta.model.registry import gate, load_model, load_model_from, model_metadata, save_model
from eta.model.training import LABEL, EtaModel, predict_frame, score, split_by_time, train_eta_model
from eta.orders.simulate import simulate_orders
from eta.serving.api import Order, QuoteRequest, QuoteStore
from eta.serving.core import Predictor, redis_client
from eta.settings import GateSettings, SimulationSettings, TrainingSettings
from tests.helpers import fixed_store_history

NOISE = {1: 0.15, 2: 0.30}  # sd of log(actual / expected): market 2 twice as noisy
CONFIG = TrainingSettings(num_boost_round=80, holdout_days=2, calibration_days=2)
GATE = GateSettings(coverage_band=(0.75, 0.85), min_market_orders=100)


@pytest.fixture(scope="module")
def noisy_split():
    orders = simulate_orders(SimulationSettings(markets=2, stores=60, days=8, orders_per_store_day=25, seed=5))
    expected = 8 + orders["estimated_store_to_consumer_driving_duration"] / 60 + 1.5 * orders["total_items"]
    noise = np.random.default_rng(3).normal(size=len(orders)) * orders["market_id"].map(NOISE).to_numpy()
    frame = fixed_store_history(orders.assign(order_id=[str(i) for i in range(len(orders))],
                                              **{LABEL: expected.to_numpy() * np.exp(noise)}))
    return split_by_time(frame, CONFIG)


@pytest.fixture(scope="module")
def model(noisy_split) -> EtaModel:
    return train_eta_model(noisy_split, CONFIG)


def _global_only(model: EtaModel) -> EtaModel:
    """The same point model with one range for every market (how ranges were calibrated before)."""
    return EtaModel(model.point, model.log_lower, model.log_upper, model.typical_order)


def test_the_noisier_market_gets_a_wider_range_and_both_markets_reach_their_coverage(noisy_split, model):
    assert min(noisy_split.calibration["market_id"].value_counts()) > 1000
    by_market = score(model, noisy_split.holdout)["by_market"]
    for market in ("1", "2"):
        assert by_market[market]["n"] > 1000
        assert 0.75 <= by_market[market]["interval_coverage_80"] <= 0.85, (market, by_market[market])
    relative_width = {m: math.exp(high) - math.exp(low) for m, (low, high) in model.market_log_range.items()}
    assert relative_width[2.0] > 1.6 * relative_width[1.0]
    assert by_market["2"]["mean_interval_width_min"] > 1.6 * by_market["1"]["mean_interval_width_min"]


def test_the_gate_refuses_a_range_that_covers_on_average_but_fails_one_market(noisy_split, model):
    one_range = score(_global_only(model), noisy_split.holdout)
    assert 0.75 <= one_range["interval_coverage_80"] <= 0.85, "on average the global range looks calibrated"
    refused = gate(one_range, None, baseline_mae=100.0, behaviour=[], config=GATE)
    checks = {c["check"]: c for c in refused.checks}
    assert not refused.promote and refused.reason == "refused: interval coverage in band per market"
    assert checks["interval coverage in band"]["passed"]
    assert "market 2" in checks["interval coverage in band per market"]["detail"]
    passed = gate(score(model, noisy_split.holdout), None, baseline_mae=100.0, behaviour=[], config=GATE)
    assert passed.promote, passed.checks


def test_the_per_market_check_ignores_markets_with_too_few_held_out_orders(noisy_split, model):
    few = GATE.model_copy(update={"min_market_orders": 10**6})
    decision = gate(score(_global_only(model), noisy_split.holdout), None, 100.0, [], few)
    assert decision.promote and "0 markets" in {c["check"]: c for c in decision.checks}[
        "interval coverage in band per market"]["detail"]


def test_the_per_market_check_allows_for_sampling_noise_in_small_markets():
    """A perfectly calibrated 80% range covers 100 orders anywhere from ~72% to ~88%: judged by its Wilson
    interval, a market refuses only where the miss is more than chance."""
    def decision(coverage: float, n: int) -> bool:
        scores = {"mae_min": 1.0, "interval_coverage_80": 0.8,
                  "by_market": {"1": {"n": n, "mae_min": 1.0, "interval_coverage_80": coverage}}}
        return gate(scores, None, baseline_mae=100.0, behaviour=[], config=GATE).promote

    assert decision(0.72, 100), "within chance of the band at 100 orders"
    assert not decision(0.72, 2000), "the same share over 2,000 orders is a real miss"
    assert not decision(0.60, 100), "far below the band even at 100 orders"
    assert decision(0.88, 100), "within chance of the band at 100 orders, above it"
    assert not decision(0.95, 2000), "a range wider than the band allows is refused too: it tells customers too little"


def test_a_market_never_calibrated_gets_the_global_range(noisy_split, model):
    rows = noisy_split.holdout.head(50)
    for unseen in (99, np.nan):
        point, lower, upper = predict_frame(model, rows.assign(market_id=unseen))
        np.testing.assert_allclose(lower / point, math.exp(model.log_lower), rtol=1e-12)
        np.testing.assert_allclose(upper / point, math.exp(model.log_upper), rtol=1e-12)
    market_1 = rows[rows["market_id"] == 1].head(3)
    point, lower, _ = predict_frame(model, pd.concat([market_1, market_1.assign(market_id=99)], ignore_index=True))
    low_1 = math.exp(model.market_log_range[1.0][0])
    np.testing.assert_allclose(lower / point, [low_1] * 3 + [math.exp(model.log_lower)] * 3, rtol=1e-12)


def test_a_market_with_too_few_calibration_orders_keeps_the_global_range(noisy_split):
    strict = CONFIG.model_copy(update={"market_range_min_orders": 10**6})
    assert train_eta_model(noisy_split, strict).market_log_range == {}


def test_per_market_offsets_are_stored_and_an_older_model_loads_with_the_global_range(local_settings, noisy_split, model):
    tag = save_model(model, {"metrics": {"mae_min": 1.0}}, local_settings, {"gate": "passed"})
    loaded = load_model(tag)
    assert loaded.market_log_range == model.market_log_range and len(loaded.market_log_range) == 2
    inputs = model_inputs(noisy_split.holdout)
    np.testing.assert_array_equal(np.array(loaded.predict(inputs)), np.array(model.predict(inputs)))
    metadata = {k: v for k, v in model_metadata(tag).items() if k != "market_log_range"}
    older = load_model_from(Path(bentoml.models.get(tag).path), metadata)
    np.testing.assert_array_equal(np.array(older.predict(inputs)), np.array(_global_only(model).predict(inputs)))


def test_the_service_core_answers_orders_and_quotes_with_the_range_score_uses(settings, noisy_split, model):
    """Parity: an order's range from `Predictor` (the Bento's core, real Redis) is the one training scores it with."""
    own = settings.model_copy(update={"feast_project": f"eta_range_{uuid.uuid4().hex[:8]}"})  # no features online
    rows = pd.concat([noisy_split.holdout[noisy_split.holdout["market_id"] == m].head(5) for m in (1, 2)],
                     ignore_index=True)
    offline = rows.assign(**{name: np.nan for name in [*STORE_HISTORY_FEATURES, *MARKET_STATE_FEATURES]})
    point, lower, upper = predict_frame(model, offline)

    async def answers():
        client = redis_client(own.redis_url)
        predictor = Predictor(model, "m:1", own, client)
        try:
            orders = [await predictor.order(Order(**{f: getattr(row[f], "item", lambda: row[f])() for f in ORDER_REQUEST_FIELDS},
                                                  created_at=row["created_at"].to_pydatetime()))
                      for _, row in rows.iterrows()]
            quotes = [await predictor.quote(QuoteRequest(market_id=m, created_at=rows["created_at"].iloc[0].to_pydatetime(), stores=[
                QuoteStore(store_id=7, estimated_store_to_consumer_driving_duration=900)])) for m in (1, 2)]
        finally:
            await predictor.drain()
            await client.aclose()
        return orders, quotes

    orders, quotes = asyncio.run(answers())
    assert not any(eta.degraded or eta.store_features_found for eta in orders)
    np.testing.assert_allclose([eta.minutes for eta in orders], point, atol=0.006)
    np.testing.assert_allclose([eta.range_min[0] for eta in orders], lower, atol=0.051)
    np.testing.assert_allclose([eta.range_min[1] for eta in orders], upper, atol=0.051)
    for market, quote in zip((1.0, 2.0), quotes):
        eta = quote.etas[0]
        low, high = (math.exp(offset) for offset in model.market_log_range[market])
        assert eta.range_min[0] == pytest.approx(eta.minutes * low, abs=0.15)
        assert eta.range_min[1] == pytest.approx(eta.minutes * high, abs=0.15)
