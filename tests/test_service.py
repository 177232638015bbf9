"""The real `bentoml serve` process of the built Bento: answers, validation errors, training/serving parity."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pandas as pd
import pytest

from eta.features.definitions import MARKET_STATE_FEATURES, ORDER_REQUEST_FIELDS, STORE_HISTORY_FEATURES, model_inputs
from eta.features.store import feature_store
from eta.model.registry import load_model, production_tag
from eta.model.training import training_set
from eta.orders.ingest import read_history


def _request(order: pd.Series) -> dict:
    return {field: order[field].item() for field in ORDER_REQUEST_FIELDS} | {"created_at": order["created_at"].isoformat()}


@pytest.fixture(scope="module")
def last_order(settings, pipeline_result) -> pd.Series:
    return read_history(settings).iloc[-1]


def test_an_order_gets_a_sane_eta_from_the_production_model(service_url, settings, last_order):
    response = httpx.post(f"{service_url}/eta/order", json=_request(last_order), timeout=10)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert 5 < answer["minutes"] < 180
    low, high = answer["range_min"]
    assert 0 <= low <= answer["minutes"] <= high
    assert answer["model_version"] == production_tag(settings)
    assert answer["store_features_found"] and answer["market_features_found"]


def test_the_readme_python_client_gets_answers_from_both_endpoints(service_url, settings, last_order):
    import bentoml

    with bentoml.SyncHTTPClient(service_url, token=None) as client:
        eta = client.order(_request(last_order))
        page = client.quote({"market_id": int(last_order["market_id"]), "stores": [
            {"store_id": int(last_order["store_id"]), "estimated_store_to_consumer_driving_duration": 600}]})
    assert eta["model_version"] == page["model_version"] == production_tag(settings)
    assert 0 < eta["range_min"][0] <= eta["minutes"] <= eta["range_min"][1]
    assert [store["store_id"] for store in page["etas"]] == [int(last_order["store_id"])]


@pytest.mark.parametrize(
    "change,field",
    [
        ({"total_items": 0}, "total_items"),
        ({"market_id": "north"}, "market_id"),
        ({"estimated_store_to_consumer_driving_duration": None}, "estimated_store_to_consumer_driving_duration"),
        ({"created_at": "not a time"}, "created_at"),
    ],
)
def test_a_malformed_request_gets_a_4xx_naming_the_field(service_url, last_order, change, field):
    response = httpx.post(f"{service_url}/eta/order", json=_request(last_order) | change, timeout=10)
    assert 400 <= response.status_code < 500
    assert field in response.text


def test_a_missing_field_is_named(service_url, last_order):
    body = _request(last_order)
    del body["subtotal"]
    response = httpx.post(f"{service_url}/eta/order", json=body, timeout=10)
    assert 400 <= response.status_code < 500 and "subtotal" in response.text


def test_openapi_docs_describe_the_endpoint(service_url):
    spec = httpx.get(f"{service_url}/docs.json", timeout=10).json()
    assert "/eta/order" in spec["paths"]


def test_service_and_training_set_compute_the_same_features_and_eta(service_url, settings, last_order):
    """Parity: the online answer equals the model applied to Feast's training row for the same order and moment."""
    store = feature_store(settings, "redis")
    online = store.get_online_features(
        features=store.get_feature_service(settings.feature_service),
        entity_rows=[{"store_id": int(last_order["store_id"]), "market_id": int(last_order["market_id"])}],
    ).to_dict()
    # The online store holds the newest values; the same point in time offline is just after the last event.
    history = read_history(settings)
    moment = history["actual_delivery_time"].max() + pd.Timedelta(seconds=1)
    offline = training_set(store, history.iloc[[-1]].assign(created_at=moment), settings.feature_service)

    served_row = {k: [v] for k, v in _request(last_order).items()} | {"created_at": [moment]}
    served_row |= {name: online[name] for name in [*STORE_HISTORY_FEATURES, *MARKET_STATE_FEATURES]}
    np.testing.assert_allclose(model_inputs(served_row), model_inputs(offline), rtol=0, atol=1e-9)

    body = _request(last_order) | {"created_at": moment.isoformat()}
    served = httpx.post(f"{service_url}/eta/order", json=body, timeout=10).json()["minutes"]
    expected = load_model(production_tag(settings)).predict(model_inputs(offline))[0][0]
    assert served == pytest.approx(expected, abs=0.006)


def _requests_counted(service_url: str) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{service_url}/metrics", timeout=10).text
    return {(sample.labels["endpoint"], sample.labels["status"]): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == "eta_request_duration_seconds_count"}


def test_prometheus_latency_histograms_count_requests_per_endpoint_and_status(service_url, last_order):
    before = _requests_counted(service_url)
    assert httpx.post(f"{service_url}/eta/order", json=_request(last_order), timeout=10).status_code == 200
    assert httpx.post(f"{service_url}/eta/order", json={"market_id": 1}, timeout=10).status_code == 422
    after = _requests_counted(service_url)
    assert after[("/eta/order", "200")] == before.get(("/eta/order", "200"), 0) + 1
    assert after[("/eta/order", "422")] == before.get(("/eta/order", "422"), 0) + 1


def test_the_request_schema_carries_exactly_the_fields_training_uses():
    from eta.serving.api import Order

    assert set(Order.model_fields) == {*ORDER_REQUEST_FIELDS, "created_at", "order_id"}


def _page(order: pd.Series, stores: int) -> dict:
    return {"market_id": int(order["market_id"]), "created_at": order["created_at"].isoformat(),
            "stores": [{"store_id": s, "estimated_store_to_consumer_driving_duration": 300 + 20 * s} for s in range(stores)]}


def test_a_restaurant_page_gets_a_range_per_store_and_shown_again_comes_from_the_l1_cache(service_url, settings,
                                                                                            last_order):
    # A time bucket no other test asks for: the first page can only be computed.
    shown_at = last_order["created_at"] + pd.Timedelta(days=30)
    page = _page(last_order, 50) | {"created_at": shown_at.isoformat()}
    before = _settled_events(service_url)
    first = httpx.post(f"{service_url}/eta/quote", json=page, timeout=10)
    assert first.status_code == 200, first.text
    quote = first.json()
    assert quote["model_version"] == production_tag(settings) and not quote["degraded"]
    assert [eta["store_id"] for eta in quote["etas"]] == list(range(50))
    for eta in quote["etas"]:
        low, high = eta["range_min"]
        assert 0 < low <= eta["minutes"] <= high
    computed = _events_once(service_url, lambda events: _grew(before, events, "quotes_l2", "miss") >= 50)
    assert _grew(before, computed, "quotes_l1", "miss") == 50 and _grew(before, computed, "quotes_l1", "hit") == 0

    assert httpx.post(f"{service_url}/eta/quote", json=page, timeout=10).json() == quote
    cached = _events_once(service_url, lambda events: _grew(computed, events, "quotes_l1", "hit") >= 50)
    assert _grew(computed, cached, "quotes_l1", "hit") == 50, "every store of the page shown again is an L1 hit"
    assert _grew(computed, cached, "quotes_l1", "miss") == 0 and _grew(computed, cached, "quotes_l2", "miss") == 0


def _events(service_url: str) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{service_url}/metrics", timeout=10).text
    return {(sample.labels["kind"], sample.labels["detail"]): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == "eta_events_total"}


def _grew(before: dict, after: dict, kind: str, detail: str) -> float:
    return after.get((kind, detail), 0) - before.get((kind, detail), 0)


def _settled_events(service_url: str) -> dict[tuple[str, str], float]:
    """The counts once no earlier test's events are still on their way: two reads a flush apart agree."""
    events = _events(service_url)
    while True:
        time.sleep(1.5)
        if (again := _events(service_url)) == events:
            return events
        events = again


def _events_once(service_url: str, condition) -> dict[tuple[str, str], float]:
    """Event counters reach Prometheus once a second (batched): the counts once `condition` holds, then one
    more flush, so nothing of the same requests is still on its way."""
    deadline = time.monotonic() + 60
    while not condition(events := _events(service_url)):
        assert time.monotonic() < deadline, f"never exported: {events}"
        time.sleep(0.1)
    time.sleep(1.5)
    return _events(service_url)


@pytest.mark.parametrize("change,field", [({"stores": []}, "stores"), ({"market_id": 0}, "market_id"),
                                          ({"surprise": 1}, "surprise"), ({"market_id": True}, "market_id"),
                                          ({"market_id": "1"}, "market_id"),
                                          ({"stores": [{"store_id": 1.0, "estimated_store_to_consumer_driving_duration": 60}]},
                                           "store_id")])
def test_a_malformed_page_gets_a_422_naming_the_field(service_url, last_order, change, field):
    response = httpx.post(f"{service_url}/eta/quote", json=_page(last_order, 3) | change, timeout=10)
    assert response.status_code == 422 and field in response.text


def test_a_page_over_the_store_limit_is_refused(service_url, settings, last_order):
    response = httpx.post(f"{service_url}/eta/quote", json=_page(last_order, settings.serving.max_stores + 1), timeout=10)
    assert response.status_code == 422 and "stores" in response.text


def test_an_oversized_body_is_refused_before_parsing(service_url, settings):
    response = httpx.post(f"{service_url}/eta/order", content=b"x" * (settings.serving.max_body_bytes + 1),
                          headers={"content-type": "application/json"}, timeout=10)
    assert response.status_code == 413


def test_the_worker_keeps_no_per_request_objects(service_url, last_order):
    """20,000 requests: the objects the collector tracks stay flat (BentoML's timeout handles used to pile up)."""
    import asyncio

    body = _request(last_order)

    async def hammer(n: int) -> None:
        async with httpx.AsyncClient(base_url=service_url, timeout=10) as client:
            async def worker(count: int) -> None:
                for _ in range(count):
                    assert (await client.post("/eta/order", json=body)).status_code == 200
            await asyncio.gather(*(worker(n // 8) for _ in range(8)))

    asyncio.run(hammer(2_000))
    warm = httpx.post(f"{service_url}/debug/gc", timeout=30).json()
    asyncio.run(hammer(20_000))
    after = httpx.post(f"{service_url}/debug/gc", timeout=30).json()
    assert after["tracked"] - warm["tracked"] < 20_000, (warm, after)
    assert after["frozen"] > 100_000, "start-up objects are frozen out of collections"


@pytest.fixture(scope="module")
def keyed_service_url(settings, pipeline_result, tmp_path_factory):
    from flows.service_process import bento_server

    with bento_server(pipeline_result["build"], settings, tmp_path_factory.mktemp("keyed") / "bento.log",
                      env={"ETA_SERVING__API_KEY": "s3cret"}) as url:
        yield url


def test_a_fresh_worker_is_ready_only_after_warm_up_predictions_ran(keyed_service_url):
    """Ready means warm: before any request, the worker behind /readyz has already predicted orders and pages
    (feature reads, quote computations), so the first real request does not pay for first-time work.
    What the first request costs is measured in `make bench-serving`, not timed here."""
    events = _events_once(keyed_service_url, lambda events: ("features", "miss") in events)
    lookups = {kind: events.get((kind, "hit"), 0) + events.get((kind, "miss"), 0) for kind in ("features", "quotes_l1")}
    assert lookups["features"] >= 20 * 2, f"20 warm-up orders read store and market features: {events}"
    assert lookups["quotes_l1"] >= 20, f"20 warm-up pages: {events}"


def test_with_an_api_key_only_callers_who_send_it_get_answers(keyed_service_url, last_order):
    body = _request(last_order)
    assert httpx.post(f"{keyed_service_url}/eta/order", json=body, timeout=10).status_code == 401
    assert httpx.post(f"{keyed_service_url}/eta/order", json=body, headers={"x-api-key": "wrong"}, timeout=10).status_code == 401
    assert httpx.post(f"{keyed_service_url}/eta/quote", json=_page(last_order, 2), timeout=10).status_code == 401
    assert httpx.post(f"{keyed_service_url}/eta/order", json=body, headers={"x-api-key": "s3cret"}, timeout=10).status_code == 200
    assert httpx.post(f"{keyed_service_url}/eta/quote", json=_page(last_order, 2),
                      headers={"authorization": "Bearer s3cret"}, timeout=10).status_code == 200
    for open_path in ("/readyz", "/livez", "/metrics", "/docs.json"):
        assert httpx.get(f"{keyed_service_url}{open_path}", timeout=10).status_code == 200, open_path
