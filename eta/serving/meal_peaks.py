"""Meal peaks from the orders held: the hours of the week busy enough to scale the services up beforehand.

An hour of the week (0 = Monday 00:00-01:00, 167 = Sunday 23:00-24:00, in the configured time zone)
is a peak when its mean orders per occurrence reach `peak_share` of the busiest hour's; consecutive
peak hours (across midnight and across Sunday -> Monday too) form one window. Means, not counts: a
history of 10 days holds some hours of the week twice and others once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from eta.settings import KubernetesSettings

HOURS_PER_WEEK = 7 * 24
MINUTES_PER_WEEK = HOURS_PER_WEEK * 60


@dataclass(frozen=True)
class PeakWindow:
    """One peak, in minutes of the week: capacity goes up at `scale_up` (lead time before `start`) and down at `end`."""

    start: int
    end: int  # exclusive; may exceed MINUTES_PER_WEEK for a window that runs past Sunday midnight
    scale_up: int  # start minus the lead time, modulo the week

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "start_at": week_time(self.start), "end_at": week_time(self.end),
                "scale_up_at": week_time(self.scale_up)}


def week_time(minute_of_week: int) -> str:
    """`Mon 11:30`: a minute of the week as people read it."""
    minute = minute_of_week % MINUTES_PER_WEEK
    day = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][minute // 1440]
    return f"{day} {minute % 1440 // 60:02d}:{minute % 60:02d}"


def hourly_volume(created_at: pd.Series, timezone: str) -> pd.Series:
    """Mean orders per hour of the week (index 0..167): orders in that hour over the times that hour occurred."""
    local = pd.DatetimeIndex(created_at).tz_convert(timezone)
    hours = local.floor("h")
    # Every hour from the first order's to the last's is one occurrence of its hour of the week, orders or not.
    span = pd.date_range(hours.min(), hours.max(), freq="h")
    occurrences = pd.Series(span.dayofweek * 24 + span.hour).value_counts()
    orders = pd.Series(hours.dayofweek * 24 + hours.hour).value_counts()
    mean = orders.reindex(range(HOURS_PER_WEEK), fill_value=0) / occurrences.reindex(range(HOURS_PER_WEEK))
    return mean.fillna(0.0)


def peak_hours(volume: pd.Series, share: float) -> list[int]:
    threshold = share * float(volume.max())
    return [hour for hour, mean in volume.items() if mean > 0 and mean >= threshold]


def merge_windows(hours: list[int], lead_minutes: int) -> list[PeakWindow]:
    """Consecutive peak hours as windows, across Sunday -> Monday too; windows no further apart than the lead time
    are one (scaling down only to scale up again minutes later would just churn pods). A week without an off-peak
    gap longer than the lead has nothing to schedule: its floor belongs in min_replicas, so no windows."""
    merged: list[list[int]] = []  # [start, end) minutes of the week
    for hour in sorted(hours):
        if merged and hour * 60 - merged[-1][1] <= lead_minutes:
            merged[-1][1] = hour * 60 + 60
        else:
            merged.append([hour * 60, hour * 60 + 60])
    if merged and merged[0][0] + MINUTES_PER_WEEK - merged[-1][1] <= lead_minutes:
        if len(merged) == 1:
            return []
        first = merged.pop(0)
        merged[-1][1] = first[1] + MINUTES_PER_WEEK
    return [PeakWindow(start, end, (start - lead_minutes) % MINUTES_PER_WEEK) for start, end in merged]


def meal_peaks(orders: pd.DataFrame, config: KubernetesSettings) -> list[PeakWindow]:
    """The peak windows of the newest `peak_history_days` of `orders` (empty when there are none)."""
    if orders.empty:
        return []
    created = pd.to_datetime(orders["created_at"], utc=True)
    recent = created[created > created.max() - pd.Timedelta(days=config.peak_history_days)]
    return merge_windows(peak_hours(hourly_volume(recent, config.timezone), config.peak_share),
                         config.peak_lead_minutes)
