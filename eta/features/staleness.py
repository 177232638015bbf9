"""How old the online store's features are: per feature view, the newest and oldest event time held in Redis.

Feast's Redis online store keeps one hash per entity (key: serialized entity key + project name) with a
`_ts:<view>` field holding the event time of that view's values; reading those fields is all it takes.
"""

from __future__ import annotations

from datetime import datetime, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from eta.features.store import redis_connection
from eta.settings import Settings


def online_staleness(settings: Settings, views: list[str], now: datetime | None = None) -> list[dict[str, object]]:
    """One row per view: entities online, newest and oldest event time, and the newest value's age in seconds."""
    now = now or datetime.now(timezone.utc)
    client = redis_connection(settings)
    project = settings.feast_project.encode()
    # Hashes only: the prediction log's stream `eta:predictions:<project>` ends with the project's name too.
    keys = [key for key in client.scan_iter(count=1000, _type="HASH") if key.endswith(project)]
    fields = [f"_ts:{view}".encode() for view in views]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, fields)
    stamps: dict[str, list[datetime]] = {view: [] for view in views}
    for values in pipe.execute():
        for view, raw in zip(views, values):
            if raw:
                stamp = Timestamp()
                stamp.ParseFromString(raw)
                stamps[view].append(stamp.ToDatetime(tzinfo=timezone.utc))
    return [
        {
            "feature_view": view,
            "entities": len(held),
            "newest": max(held).isoformat() if held else None,
            "oldest": min(held).isoformat() if held else None,
            "newest_age_s": round((now - max(held)).total_seconds(), 1) if held else None,
        }
        for view, held in stamps.items()
    ]
