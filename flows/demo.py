"""`make demo`: the whole loop once on simulated orders, then real HTTP requests to the built Bento.

Runs the parent flow (ingest -> features -> train -> gate -> build -> drift) through one Prefect
server, serves the Bento it built, asks it for a few order ETAs and one restaurant page of quotes,
prints the answers, the model's metrics against the naive baseline and where the drift report is,
then stops everything it started.
"""

from __future__ import annotations

import time

import httpx

from eta.features.definitions import ORDER_REQUEST_FIELDS
from eta.features.store import online_store_kind
from eta.model.registry import model_metadata, production_tag
from eta.orders.ingest import read_history
from eta.settings import get_settings
from flows.pipeline import eta_pipeline
from flows.prefect_api import prefect_api
from flows.service_process import bento_server


def main() -> None:
    started = time.perf_counter()
    settings = get_settings()
    online = online_store_kind(settings)
    where = settings.redis_url if online == "redis" else "embedded SQLite (no Redis answered at REDIS_URL)"
    print(f"== eta demo: data in {settings.data_path}; online store: {online} ({where})")
    with prefect_api(settings.data_path / "prefect") as api_url:
        print(f"== Prefect API at {api_url}")
        result = eta_pipeline()
    print("== stages:", ", ".join(f"{name} {seconds:.1f}s" for name, seconds in result["timings_s"].items()))

    trained, gate = result["train"], result["train"]["gate"]
    metrics, naive = trained["metrics"], trained["baselines"]["naive_median"]
    print(f"== challenger {trained['model']}: MAE {metrics['mae_min']:.2f} min, RMSE {metrics['rmse_min']:.2f}, "
          f"80% range covers {metrics['interval_coverage_80']:.1%} of {metrics['n_orders']} held-out orders; "
          f"naive median MAE {naive['mae_min']:.2f}, RMSE {naive['rmse_min']:.2f}")
    print(f"== gate: {'promoted' if gate['promote'] else 'not promoted'} ({gate['reason']})")
    tag = production_tag(settings)
    print(f"== production model {tag}: held-out MAE {model_metadata(tag)['metrics']['mae_min']:.2f} min")

    orders = read_history(settings).tail(3)
    with bento_server(result["build"], settings, settings.data_path / "logs" / "bento.log") as url:
        print(f"== Bento {result['build']} serving at {url} (API docs at {url}/, the OpenAPI spec at {url}/docs.json)")
        for body in orders[ORDER_REQUEST_FIELDS].to_dict("records"):
            sent = time.perf_counter()
            answer = httpx.post(f"{url}/eta/order", json=body, timeout=10).json()
            took_ms = (time.perf_counter() - sent) * 1000
            print(f"   POST /eta/order store {body['store_id']} market {body['market_id']} "
                  f"({body['total_items']:.0f} items, {body['estimated_store_to_consumer_driving_duration']:.0f}s drive)"
                  f" -> {answer['minutes']:.1f} min ({answer['range_min'][0]:.0f}-{answer['range_min'][1]:.0f}), model {answer['model_version']} [{took_ms:.1f} ms]")
        market = int(orders["market_id"].iloc[-1])
        shown = read_history(settings).query("market_id == @market")["store_id"].drop_duplicates().head(5)
        page = {"market_id": market, "stores": [
            {"store_id": int(store), "estimated_store_to_consumer_driving_duration": 300 + 120 * i}
            for i, store in enumerate(shown)]}
        sent = time.perf_counter()
        quote = httpx.post(f"{url}/eta/quote", json=page, timeout=10).json()
        took_ms = (time.perf_counter() - sent) * 1000
        ranges = ", ".join(f"store {e['store_id']} {e['range_min'][0]:.0f}-{e['range_min'][1]:.0f}" for e in quote["etas"])
        print(f"   POST /eta/quote market {market}, {len(page['stores'])} stores -> {ranges} [{took_ms:.1f} ms]")
    drift = result["drift"]
    print(f"== drift detected: {drift['drift_detected']} ({len(drift['drifted_columns'])} of "
          f"{drift['columns_checked']} columns drifted); report: {drift['html']}")
    print(f"== demo finished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
