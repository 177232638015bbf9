"""Configuration: env over YAML, namespaces, and the Redis URL as Feast wants it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from eta.features.store import feast_redis_connection_string, repo_config
from eta.settings import CONFIG_FILE, Settings


def test_env_vars_override_the_yaml_and_nested_sections(monkeypatch):
    monkeypatch.setenv("ETA_TRAINING__NUM_BOOST_ROUND", "77")
    monkeypatch.setenv("ETA_GATE__MAE_MARGIN", "0.3")
    settings = Settings()
    assert settings.training.num_boost_round == 77 and settings.gate.mae_margin == 0.3
    defaults = type(settings.training)()
    assert (settings.training.learning_rate, settings.training.num_leaves) == (0.03, 15), "untouched fields keep the YAML's values"
    assert (defaults.learning_rate, defaults.num_leaves) != (0.03, 15), "values only the YAML gives, not the code's defaults"


def test_a_bad_value_names_the_field(monkeypatch):
    monkeypatch.setenv("ETA_TRAINING__INTERVAL", "1.5")
    with pytest.raises(ValidationError, match="training.interval"):
        Settings()


def test_namespaces_separate_data_feast_project_and_model_name(settings):
    real = settings.in_namespace("eta_doordash")
    assert real.project_path != settings.project_path and real.orders_path.parent == real.project_path
    assert real.model_name == "eta_doordash_model" and real.feast_project == "eta_doordash"
    assert repo_config(real, "sqlite").project == "eta_doordash"


@pytest.mark.parametrize(
    "url,expected",
    [
        ("redis://localhost:6379/0", "localhost:6379,db=0"),
        ("redis://10.0.0.5:6380", "10.0.0.5:6380"),
        ("rediss://:s3cret@memorystore.internal:6378/2", "memorystore.internal:6378,db=2,password=s3cret,ssl=true"),
    ],
)
def test_redis_urls_become_feast_connection_strings(url, expected):
    assert feast_redis_connection_string(url) == expected


def test_a_production_redis_cluster_with_tls_and_password_is_configured_from_the_environment(monkeypatch):
    """Config only: no cluster runs here. The secret URL and the cluster type reach Feast and the service."""
    import redis.asyncio as aioredis

    from eta.serving.core import redis_client

    monkeypatch.setenv("ETA_REDIS_URL", "rediss://:s3cret@memorystore.internal:6378")
    monkeypatch.setenv("ETA_REDIS_TYPE", "redis_cluster")
    settings = Settings()
    online = repo_config(settings, "redis").online_store
    assert online.redis_type == "redis_cluster"
    assert online.connection_string == "memorystore.internal:6378,password=s3cret,ssl=true"
    client = redis_client(settings.redis_url, settings.redis_type)
    assert isinstance(client, aioredis.RedisCluster)
    assert "s3cret" not in CONFIG_FILE.read_text(), "never in the repo"
