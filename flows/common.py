"""What every flow shares: settings with a run's overrides applied."""

from __future__ import annotations

from typing import Any

from eta.settings import Settings, get_settings


def settings_with(**overrides: Any) -> Settings:
    """The configured settings, with a flow run's non-None parameters (dotted names for sections) applied."""
    settings = get_settings()
    data = settings.model_dump()
    for dotted, value in overrides.items():
        if value is None:
            continue
        *sections, field = dotted.split("__")
        target = data
        for section in sections:
            target = target[section]
        target[field] = value
    return Settings.model_validate(data)
