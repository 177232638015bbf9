"""What every flow shares: settings with a run's overrides applied."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from eta.errors import UserError
from eta.settings import Settings, get_settings


def namespace_for(orders_file: str | None, namespace: str | None) -> str | None:
    """The namespace a run uses: the one named, else one per orders file, else the configured one (simulator)."""
    if namespace or not orders_file:
        return namespace
    return "eta_" + re.sub(r"[^a-z0-9]+", "_", Path(orders_file).stem.lower()).strip("_")


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Tasks retry I/O hiccups; a mistake in the user's input would fail the same way again, only later."""
    return not isinstance(state.data, UserError)


def settings_with(namespace: str | None = None, **overrides: Any) -> Settings:
    """The configured settings in `namespace` (if given), with a run's non-None parameters applied.

    Section fields are named `section__field`, as in env vars.
    """
    settings = get_settings() if namespace is None else get_settings().in_namespace(namespace)
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
