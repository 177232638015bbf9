"""What people open in a browser, looked at as they would: rendered by headless Chromium, JavaScript run.

The Bento's API docs (BentoML's Swagger UI at `/`), with and without an API key, and Feast's own UI
over a namespace's `feature_store.yaml` from `eta feast-config`. Chromium is Debian's (`make test`
installs it when missing).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from feast.repo_config import load_repo_config

from flows.processes import free_port, server_process

CHROMIUM = "/usr/bin/chromium"
BIN = Path(sys.executable).parent


def rendered_dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran, as Chromium renders it.

    Virtual time stands still while requests are in flight, so a slow server only makes this slower.
    """
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180, check=True,
    ).stdout


def visible_text(dom: str) -> str:
    return re.sub(r"<[^>]+>", "", re.sub(r"<(script|style|noscript)\b.*?</\1>", " ", dom, flags=re.S))


class _SwaggerOperations(HTMLParser):
    """The paths of the operations Swagger UI lists, one summary line each (the page's description, the
    README, names the endpoints too: only an operation line shows the spec's routes were rendered)."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if "opblock-summary-path" in (attributes.get("class") or "").split():
            self.paths.append(attributes.get("data-path") or "")


def swagger_operations(dom: str) -> list[str]:
    parser = _SwaggerOperations()
    parser.feed(dom)
    return parser.paths


@pytest.fixture(scope="module")
def keyed_docs_url(settings, pipeline_result, tmp_path_factory):
    """The same Bento served with an API key."""
    from flows.service_process import bento_server

    with bento_server(pipeline_result["build"], settings, tmp_path_factory.mktemp("keyed") / "bento.log",
                      env={"ETA_SERVING__API_KEY": "s3cret"}) as url:
        yield url


def test_the_api_docs_page_shows_both_endpoints_without_a_key(service_url, tmp_path):
    dom = rendered_dom(f"{service_url}/", tmp_path / "chromium")
    assert {"/eta/order", "/eta/quote"} <= set(swagger_operations(dom)), visible_text(dom)[:2000]


def test_the_api_docs_page_shows_both_endpoints_with_a_key_set(keyed_docs_url, tmp_path):
    """The docs are open (page, assets, spec), the API is not: a browser sends no key."""
    dom = rendered_dom(f"{keyed_docs_url}/", tmp_path / "chromium")
    assert {"/eta/order", "/eta/quote"} <= set(swagger_operations(dom)), visible_text(dom)[:2000]


def test_feast_ui_lists_the_namespaces_feature_views(redis_store, tmp_path):
    own, _, _ = redis_store
    env = {"ETA_DATA_DIR": str(own.data_path), "ETA_ONLINE_STORE": "redis", "ETA_REDIS_URL": own.redis_url}
    written = subprocess.run([str(BIN / "eta"), "feast-config", "--namespace", own.feast_project,
                              "--out", str(tmp_path / "feast")], capture_output=True, text=True, check=True,
                             env={**_environ(), **env})
    assert json.loads(written.stdout)["project"] == own.feast_project

    listed = subprocess.run([str(BIN / "feast"), "-c", str(tmp_path / "feast"), "feature-views", "list"],
                            capture_output=True, text=True, check=True, env=_environ())
    assert {"store_history", "market_state"} <= set(re.findall(r"^(\w+)\s", listed.stdout, flags=re.M)), listed.stdout

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "feast"), "-c", str(tmp_path / "feast"), "ui", "--host", "127.0.0.1", "--port", str(port)]
    with server_process(command, f"{url}/", _environ(), tmp_path / "feast_ui.log"):
        text = visible_text(rendered_dom(f"{url}/p/{own.feast_project}/feature-view", tmp_path / "chromium"))
    assert "store_history" in text and "market_state" in text, text[:2000]


def test_feast_config_names_the_redis_password_and_feast_fills_it_in(tmp_path, monkeypatch):
    url = "rediss://:pass-w0rd@redis.example:6380/2"
    env = {"ETA_ONLINE_STORE": "redis", "ETA_REDIS_URL": url}
    subprocess.run([str(BIN / "eta"), "feast-config", "--namespace", "eta_secret_check", "--out", str(tmp_path)],
                   capture_output=True, check=True, env={**_environ(), **env})
    written = (tmp_path / "feature_store.yaml").read_text()
    assert "pass-w0rd" not in written and "${ETA_REDIS_PASSWORD}" in written

    monkeypatch.setenv("ETA_REDIS_PASSWORD", "pass-w0rd")
    config = load_repo_config(tmp_path, tmp_path / "feature_store.yaml")
    assert config.online_store.connection_string == "redis.example:6380,db=2,ssl=true,password=pass-w0rd"
    assert config.project == "eta_secret_check"


def _environ() -> dict[str, str]:
    return dict(os.environ)
