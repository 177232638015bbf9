"""`eta feast-config`: a `feature_store.yaml` so Feast's own CLI and UI see a namespace as the code does.

eta builds its Feast configuration in code (`eta.features.store.feature_store_yaml`); this writes that
same configuration to a file, for `feast -c <dir> feature-views list`, `feast -c <dir> ui` or `feast
-c <dir> materialize-incremental`. The Redis password never goes into the file: Feast expands
`${VAR}` in `feature_store.yaml` when it reads it, so the file names `ETA_REDIS_PASSWORD` instead.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import yaml

from eta.features.store import feature_store_yaml, online_store_kind
from eta.settings import Settings

PASSWORD_VARIABLE = "ETA_REDIS_PASSWORD"


def write_feast_config(settings: Settings, out: Path | None = None) -> dict[str, object]:
    """Write `<out>/feature_store.yaml` (default: the namespace's `feast/` folder); return what Feast needs.

    The folder holds no definitions on purpose: `eta features` applies them (it anchors the sources in
    the namespace's own data folder), and Feast's CLI only reads the registry it wrote.
    """
    online = online_store_kind(settings)
    config = feature_store_yaml(settings, online)
    needs_env = []
    if online == "redis" and urlparse(settings.redis_url).password:
        config["online_store"]["connection_string"] = _without_password(config["online_store"]["connection_string"])
        needs_env.append(PASSWORD_VARIABLE)
    folder = (out or settings.project_path / "feast").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "feature_store.yaml"
    header = "# Written by `eta feast-config`; eta's settings are the source: rerun it rather than editing this.\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return {"feature_store_yaml": str(path), "project": settings.feast_project, "online_store": online,
            "needs_env": needs_env, "try": [f"feast -c {folder} feature-views list", f"feast -c {folder} ui"]}


def _without_password(connection_string: str) -> str:
    """Feast's connection string with its `password=...` part replaced by a reference to the variable."""
    parts = [part for part in connection_string.split(",") if not part.startswith("password=")]
    return ",".join([*parts, f"password=${{{PASSWORD_VARIABLE}}}"])
