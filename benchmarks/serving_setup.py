"""What the serving benchmarks share: a namespace of their own with trained model and online features, request bodies.

Environment first (before eta is imported): a `bench` namespace in the configured data folder, a
simulation of 5 markets x 500 stores x 14 days (~84k orders), so the online store holds thousands of
real entities. Run through the same parent flow as everything else (ingest -> features -> train), via
one Prefect server.
"""

from __future__ import annotations

import json
import os
import random
from datetime import datetime, timedelta, timezone

BENCH_ENV = {
    "ETA_FEAST_PROJECT": "eta_bench",
    "ETA_MODEL_NAME": "eta_bench_model",
    "ETA_ONLINE_STORE": "redis",
    "ETA_SIMULATION__MARKETS": "5",
    "ETA_SIMULATION__STORES": "500",
    "ETA_SIMULATION__DAYS": "14",
}
for name, value in BENCH_ENV.items():
    os.environ.setdefault(name, value)

from eta.features.definitions import ORDER_REQUEST_FIELDS  # noqa: E402
from eta.model.registry import production_tag  # noqa: E402
from eta.orders.ingest import read_history  # noqa: E402
from eta.settings import Settings, get_settings  # noqa: E402
from flows.pipeline import eta_pipeline  # noqa: E402
from flows.prefect_api import prefect_api  # noqa: E402


def prepare() -> Settings:
    """Orders, features (materialized to Redis) and a production model for the bench namespace."""
    settings = get_settings()
    with prefect_api(settings.data_path / "prefect") as _:
        eta_pipeline(build=False)
    if production_tag(settings) is None:
        raise RuntimeError("the benchmark's model did not pass the gate; nothing to serve")
    return settings


def order_bodies(settings: Settings, n: int = 2000) -> list[bytes]:
    """Recent real orders of the namespace (order time left out: the service takes now)."""
    orders = read_history(settings).tail(n)
    return [json.dumps(row).encode() for row in orders[ORDER_REQUEST_FIELDS].to_dict("records")]


def quote_bodies(settings: Settings, n: int, stores: int, cold: bool, seed: int = 0) -> list[bytes]:
    """Restaurant pages of `stores` stores of one market. `cold`: each page in a time bucket of its own,
    so no answer cache can hold it; otherwise `n` pages shown again and again within one bucket."""
    history = read_history(settings)
    by_market = history.groupby("market_id")["store_id"].unique()
    rng = random.Random(seed)
    bucket = timedelta(seconds=settings.serving.quote_bucket_s)
    start = datetime.now(timezone.utc)
    pages = []
    for i in range(n):
        market = rng.choice(list(by_market.index))
        shown = rng.sample(list(by_market[market]), min(stores, len(by_market[market])))
        at = start + i * bucket if cold else start
        pages.append(json.dumps({
            "market_id": int(market), "created_at": at.isoformat(),
            "stores": [{"store_id": int(s), "estimated_store_to_consumer_driving_duration": rng.randint(120, 2400)}
                       for s in shown],
        }).encode())
    return pages


def feast_bodies(settings: Settings, n: int = 2000) -> list[bytes]:
    """The same entities as the order bodies, asked of Feast's feature server for the same feature service."""
    orders = read_history(settings).tail(n)
    return [json.dumps({"feature_service": settings.feature_service,
                        "entities": {"store_id": [int(s)], "market_id": [int(m)]}}).encode()
            for s, m in zip(orders["store_id"], orders["market_id"])]
