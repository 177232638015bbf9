"""`make demo`: the whole loop once on simulated orders, real HTTP requests to the built Bento, then the feedback
loop on what it answered.

Runs the parent flow (ingest -> features -> train -> gate -> build -> drift) through one Prefect server on the
simulated orders delivered before the simulation's last day, serves the Bento it built and sends it that day's
orders in time order as the app places them (each after its market state's push, the dispatch system's event;
with its order time, so the service derives the id ingestion gives the order) and one restaurant page of quotes;
prints a few answers, the model's metrics against the naive baseline and where the drift report is. Then the day
is ingested with its actual delivery times and its features refreshed, the logged answers are landed and joined
with them (`land-predictions`) and their week is reported (`weekly-report`); it prints where the report is and
the Evidently UI command, and stops everything it started.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import httpx
import pandas as pd

from eta.features.store import feature_store, online_store_kind, push_market_state
from eta.model.registry import model_metadata, production_tag
from eta.orders.ingest import read_history
from eta.orders.schema import validate_orders
from eta.orders.simulate import simulate_orders
from eta.serving.api import order_request
from eta.settings import Settings, get_settings
from flows.features import build_features
from flows.ingest import ingest_orders
from flows.land_predictions import land_predictions, predictions_path
from flows.monitor import weekly_report_flow
from flows.pipeline import eta_pipeline
from flows.prefect_api import prefect_api
from flows.service_process import bento_server

# The service's market-state cache keeps an entry for 1 s of wall time; the demo sends a simulated day in seconds,
# so 1 s would stand for many simulated minutes of pushes unseen. 1 ms is what 1 s is next to a day in production.
DEMO_SERVICE_ENV = {"ETA_SERVING__MARKET_FEATURES_TTL_S": "0.001"}


def last_day(settings: Settings) -> pd.Timestamp:
    """Midnight (UTC) starting the simulation's last day: the day the demo sends through the service."""
    return pd.Timestamp(settings.simulation.start, tz="UTC") + pd.Timedelta(days=settings.simulation.days - 1)


def logged_order_ids(settings: Settings, day: str) -> set[str]:
    """Order ids of `day` whose answers an earlier run already landed: a second demo sends them no more."""
    files = sorted((predictions_path(settings) / f"day={day}").glob("*.parquet"))
    if not files:
        return set()
    landed = pd.concat([pd.read_parquet(f, columns=["kind", "order_id"]) for f in files])
    return set(landed.loc[landed["kind"] == "order", "order_id"])


def main() -> None:
    started = time.perf_counter()
    settings = get_settings()
    online = online_store_kind(settings)
    where = settings.redis_url if online == "redis" else "embedded SQLite (no Redis answered at REDIS_URL)"
    day = last_day(settings)
    print(f"== eta demo: data in {settings.data_path}; online store: {online} ({where})")
    with prefect_api(settings.data_path / "prefect") as api_url:
        print(f"== Prefect API at {api_url}; the orders delivered before {day:%Y-%m-%d} first, that day's through "
              "the service")
        result = eta_pipeline(delivered_before=day.isoformat())
        print_models(result, settings)
        serve_and_ask(result, settings, day)
        ingested = ingest_orders()
        build_features()
        print(f"== ingested {ingested['new_orders']} orders with their actual delivery times (the rest of "
              f"{day:%Y-%m-%d}); features refreshed")
        if online == "redis":
            feedback(settings, day)
        else:
            print(f"== no Redis: the answers' log waits in the spool ({settings.project_path / 'prediction_spool'}); "
                  f"`eta land` and `eta report --week {day:%Y-%m-%d}` land and report it once Redis answers")
    print(f"== demo finished in {time.perf_counter() - started:.0f} s")


def print_models(result: dict, settings: Settings) -> None:
    print("== stages:", ", ".join(f"{name} {seconds:.1f}s" for name, seconds in result["timings_s"].items()))
    trained, gate = result["train"], result["train"]["gate"]
    metrics, naive = trained["metrics"], trained["baselines"]["naive_median"]
    print(f"== challenger {trained['model']}: MAE {metrics['mae_min']:.2f} min, RMSE {metrics['rmse_min']:.2f}, "
          f"80% range covers {metrics['interval_coverage_80']:.1%} of {metrics['n_orders']} held-out orders; "
          f"naive median MAE {naive['mae_min']:.2f}, RMSE {naive['rmse_min']:.2f}")
    print(f"== gate: {'promoted' if gate['promote'] else 'not promoted'} ({gate['reason']})")
    tag = production_tag(settings)
    print(f"== production model {tag}: held-out MAE {model_metadata(tag)['metrics']['mae_min']:.2f} min")


def serve_and_ask(result: dict, settings: Settings, day: pd.Timestamp) -> None:
    """Serve the built Bento; send it the day's orders not answered before, in time order, and a restaurant page."""
    simulated = validate_orders(simulate_orders(settings.simulation), settings.validation).accepted
    orders = simulated[(simulated["created_at"] >= day) & (simulated["created_at"] < day + pd.Timedelta(days=1))]
    orders = orders[~orders["order_id"].isin(logged_order_ids(settings, f"{day:%Y-%m-%d}"))].reset_index(drop=True)
    features = feature_store(settings)
    bodies = [order_request(order) for order in orders.to_dict("records")]
    took_ms, degraded = [], 0
    log = settings.data_path / "logs" / "bento.log"
    with bento_server(result["build"], settings, log, env=DEMO_SERVICE_ENV) as url, httpx.Client(timeout=10) as client:
        print(f"== Bento {result['build']} serving at {url} (API docs at {url}/, the OpenAPI spec at {url}/docs.json)")
        for i, body in enumerate(bodies):
            push_market_state(features, orders.iloc[i:i + 1])
            sent = time.perf_counter()
            answer = client.post(f"{url}/eta/order", json=body).raise_for_status().json()
            took_ms.append((time.perf_counter() - sent) * 1000)
            degraded += answer["degraded"]
            if i < 3:
                print(f"   POST /eta/order store {body['store_id']} market {body['market_id']} at {body['created_at']} "
                      f"({body['total_items']:.0f} items, "
                      f"{body['estimated_store_to_consumer_driving_duration']:.0f}s drive)"
                      f" -> {answer['minutes']:.1f} min ({answer['range_min'][0]:.0f}-{answer['range_min'][1]:.0f}), "
                      f"model {answer['model_version']}, order {answer['order_id']} [{took_ms[-1]:.1f} ms]")
        if took_ms:
            print(f"   ... {len(took_ms)} orders of {day:%Y-%m-%d} sent in time order, each after its market state's "
                  f"push (Feast's push source): median {statistics.median(took_ms):.1f} ms, {degraded} degraded")
        else:
            print(f"   the orders of {day:%Y-%m-%d} were answered and landed by an earlier demo run: not sent again")
        history = read_history(settings)
        market = int(history["market_id"].iloc[-1])
        shown = history.query("market_id == @market")["store_id"].drop_duplicates().head(5)
        page = {"market_id": market, "stores": [
            {"store_id": int(store), "estimated_store_to_consumer_driving_duration": 300 + 120 * i}
            for i, store in enumerate(shown)]}
        sent = time.perf_counter()
        quote = client.post(f"{url}/eta/quote", json=page).raise_for_status().json()
        quote_ms = (time.perf_counter() - sent) * 1000
        ranges = ", ".join(f"store {e['store_id']} {e['range_min'][0]:.0f}-{e['range_min'][1]:.0f}" for e in quote["etas"])
        print(f"   POST /eta/quote market {market}, {len(page['stores'])} stores -> {ranges} [{quote_ms:.1f} ms]")
    drift = result["drift"]
    print(f"== drift detected: {drift['drift_detected']} ({len(drift['drifted_columns'])} of "
          f"{drift['columns_checked']} columns drifted); report: {drift['html']}")


def feedback(settings: Settings, day: pd.Timestamp) -> None:
    """The feedback loop on the demo's answers: land them joined with their orders' actual times, report the week."""
    landed = land_predictions()
    print(f"== prediction log landed: {landed['landed']} answers new, {landed['joined']} joined with their orders' "
          f"actual times, {landed['unjoined']} waiting for theirs ({landed['predictions_joined']})")
    report = weekly_report_flow(week=f"{day:%Y-%m-%d}")
    held_out = model_metadata(report["model"])["metrics"]["mae_min"]
    print(f"== weekly report {report['week']}, model {report['model']}: MAE {report['mae_min']:.2f} min on "
          f"{report['labelled_orders']} orders with actual times (held-out {held_out:.2f}), 80% range covers "
          f"{report['interval_coverage_80']:.1%}; drifted features as served: "
          f"{', '.join(report['drifted_features']) or 'none'}")
    print(f"== weekly report: {report['html']}")
    print(f"== Evidently workspace {report['workspace']}, project {report['project']}: the week's snapshot beside "
          f"earlier weeks'; the dashboard: {Path(sys.executable).with_name('evidently')} ui --workspace "
          f"{report['workspace']}  (then http://127.0.0.1:8000)")


if __name__ == "__main__":
    main()
