"""One typed settings object: `eta.yaml` beside the project, overridden by `ETA_*` env vars."""

from __future__ import annotations

import os
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE = Path(os.environ.get("ETA_CONFIG", PROJECT_ROOT / "eta.yaml"))


class FeatureSettings(BaseModel):
    store_history_ttl_days: int = Field(14, ge=1)
    market_state_ttl_minutes: int = Field(60, ge=1)
    # Each materialization starts this long before the last one ended, so late-arriving orders get in.
    materialize_overlap_minutes: float = Field(60, ge=0)


class ValidationSettings(BaseModel):
    max_delivery_minutes: float = Field(360, gt=0)
    max_items: int = Field(500, ge=1)


class WorldChange(BaseModel):
    """A change in the simulated world from `from_day` on (in `market`, or everywhere when None).

    rain: real drives take `size` longer (+0.4: 40%) while the routing estimate stays as it was;
    courier_shortage: `size` of the couriers stay home (busy ratio and outstanding orders rise);
    menu_change: baskets `size` * 5 items bigger and kitchens `size` slower;
    new_stores: the last `size` share of stores open that day, without history.
    """

    kind: Literal["rain", "courier_shortage", "menu_change", "new_stores"]
    from_day: int = Field(ge=0)
    market: int | None = Field(None, ge=1)
    size: float = Field(gt=0, le=5)


class RetrainingSettings(BaseModel):
    """When the weekly report triggers the retrain deployment (`eta.monitoring.retraining`)."""

    important_features: int = Field(8, ge=1)  # drift counts only in the model's top features by gain
    mae_decay_margin: float = Field(0.10, ge=0)  # MAE over the champion's held-out MAE by more than this share
    min_labelled_orders: int = Field(200, ge=1)  # quality is judged only on a week (or market) with this many actuals
    # The ETA is a median: about half the orders arrive after it. Over this share, overall or in a market, is a breach.
    max_under_prediction_rate: float = Field(0.65, gt=0.5, le=1)
    min_new_labelled_orders: int = Field(1000, ge=0)  # and retraining needs this many orders since the model's data
    cooldown_hours: float = Field(24, ge=0)  # no second retrain within this long of the last one
    deployment: str = "train-model/retrain"  # the Prefect deployment a breach runs


class SimulationSettings(BaseModel):
    markets: int = Field(3, ge=1)
    stores: int = Field(60, ge=1)
    days: int = Field(14, ge=1)
    orders_per_store_day: float = Field(12, gt=0)
    seed: int = 7
    start: date = date(2026, 10, 1)
    changes: list[WorldChange] = []  # scenarios: the same world, changed from a given day


class TrainingSettings(BaseModel):
    # Train on the newest `window_days` of orders held (None: all of them): a model learns the world as it is now,
    # and the first weeks of a history, whose 28-day store features are still filling up, drop out.
    window_days: float | None = Field(None, gt=0)
    holdout_days: float = Field(2, gt=0)
    calibration_days: float = Field(2, gt=0)
    interval: float = Field(0.8, gt=0, lt=1)
    num_boost_round: int = Field(300, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(31, ge=2)
    min_data_in_leaf: int = Field(40, ge=1)
    dask_scheduler: str | None = None  # "local" for a LocalCluster, or a scheduler address; None trains in-process
    # The range per market: a market's own conformal offsets weigh n / (n + market_range_shrinkage) against the
    # global ones (n: its calibration orders); with fewer than market_range_min_orders it keeps the global range.
    market_range_min_orders: int = Field(30, ge=10)
    market_range_shrinkage: float = Field(200, ge=0)


class GateSettings(BaseModel):
    mae_margin: float = Field(0.0, ge=0)  # challenger must beat the champion's MAE by more than this (minutes)
    market_regression_limit: float = Field(0.05, ge=0)  # no market's MAE may grow by more than this share
    coverage_band: tuple[float, float] = (0.75, 0.85)  # held-out coverage of the calibrated interval
    min_market_orders: int = Field(100, ge=1)  # each market with this many held-out orders must cover within the band too
    market_coverage_confidence: float = Field(0.95, gt=0, lt=1)  # a market fails when this interval of its coverage misses the band


class DriftSettings(BaseModel):
    recent_days: float = Field(2, gt=0)


class MonitoringSettings(BaseModel):
    """The weekly report: logged predictions of one ISO week against the production model's training reference."""

    predictions_path: Path = Path("predictions_joined")  # the landed, joined log (Parquet, day=YYYY-MM-DD/ folders) in the namespace folder
    max_rows: int = Field(50_000, ge=1000)  # a bigger week (and reference) is sampled to this many orders, seeded
    sample_seed: int = 0
    # Distances, not p-values: on tens of thousands of rows a test flags differences nobody would act on.
    num_drift_method: str = "wasserstein"
    cat_drift_method: str = "jensenshannon"
    drift_threshold: float = Field(0.1, gt=0)
    hour_bands: list[int] = [0, 6, 11, 14, 17, 21, 24]  # UTC band edges: night, morning, lunch, afternoon, dinner, late


class ServingSettings(BaseModel):
    api_key: SecretStr | None = None  # set from a secret (ETA_SERVING__API_KEY); None leaves the API open
    max_stores: int = Field(100, ge=1, le=1000)  # stores per quote request (one restaurant list page)
    max_body_bytes: int = Field(64_000, ge=1024)
    feature_timeout_ms: float = Field(8, gt=0)  # longer and the answer is served degraded
    redis_retry_after_s: float = Field(0.5, gt=0)  # after a failure, serve degraded this long before trying again
    store_features_ttl_s: float = Field(60, gt=0)  # store history changes with deliveries: a minute is fresh
    market_features_ttl_s: float = Field(1, gt=0)  # market state is pushed by the minute: order answers want it now
    quote_ttl_s: int = Field(60, ge=1)  # quote answers, in L1 and L2
    quote_bucket_s: int = Field(300, ge=1)  # quotes are computed for the start of their time bucket
    quote_drive_step_s: int = Field(60, ge=1)  # quotes round the drive estimate to this step
    l1_max_entries: int = Field(200_000, ge=100)


class PredictionLogSettings(BaseModel):
    """Every /eta/order answer (and a sample of /eta/quote answers) recorded in a Redis Stream, landed by a flow."""

    enabled: bool = True  # off only to measure what logging costs
    quote_sample_rate: float = Field(0.01, ge=0, le=1)  # quotes are many and cached: a share of them is enough
    # Where workers append each record before shipping it (per namespace below it). Default: the data folder's
    # `<project>/prediction_spool`; on Kubernetes the pod's own emptyDir (the data volume is read-only there).
    spool_dir: Path | None = None
    ship_timeout_ms: float = Field(1000, gt=0)  # a pipeline of spooled records slower than this is shipped again
    retry_after_s: float = Field(0.5, gt=0)  # after a failed pipeline, records wait in the spool this long
    stream_max_len: int = Field(2_000_000, ge=1000)  # safety cap (approximate; ~1 kB an entry) if landing stops
    land_max_entries: int = Field(200_000, ge=1)  # entries one landing run takes from the stream
    land_batch: int = Field(10_000, ge=1)  # entries per XREADGROUP / Parquet file
    claim_idle_s: float = Field(300, ge=0)  # entries read by a lander that died this long ago are claimed
    bigquery_table: str = "predictions"  # gcp profile: table in gcp.dataset


class GcpSettings(BaseModel):
    """Production on Google Cloud: BigQuery holds the orders and Feast's offline store."""

    project: str = "eta-prod"
    dataset: str = "eta"
    orders_table: str = "orders"
    location: str = "US"
    api_endpoint: str | None = None  # a BigQuery emulator's address (tests); None: Google's own
    ingest_overlap_minutes: float = Field(120, ge=0)  # each incremental read re-covers this much: late rows


class ServiceScaling(BaseModel):
    """One Bento service's Kubernetes Deployment: replicas off-peak and during meal peaks, resources."""

    min_replicas: int = Field(2, ge=1)  # off-peak floor of the autoscaler (2: a rollout or a lost node keeps one)
    max_replicas: int = Field(10, ge=1)
    peak_replicas: int = Field(4, ge=1)  # the autoscaler's floor during a meal peak (raised by CronJob beforehand)
    cpu_request: str = "1"  # the HPA's utilization target is a share of this
    cpu_limit: str = "2"
    memory_request: str = "1Gi"
    memory_limit: str = "2Gi"
    service: str  # its @bentoml.service name in bentos/eta_service.py
    depends_on: list[str] = []  # Bento services it calls (EtaOrder forwards /eta/quote to EtaQuote)

    @model_validator(mode="after")
    def _peak_within_bounds(self) -> ServiceScaling:
        if not self.min_replicas <= self.peak_replicas <= self.max_replicas:
            raise ValueError(f"peak_replicas {self.peak_replicas} must lie within min_replicas {self.min_replicas} "
                             f"and max_replicas {self.max_replicas}")
        return self


class KubernetesSettings(BaseModel):
    """What `eta manifests` renders: the services' Deployments, autoscalers and the meal-peak CronJobs."""

    version: str = "1.34.0"  # the Kubernetes version the manifests are written for and validated against
    namespace: str = Field("eta", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    image: str = "eta:latest"  # the Bento's image (`bentoml containerize eta:latest`)
    flows_image: str = "eta-flows:latest"  # the Prefect flows' image (Kubernetes work pool)
    kubectl_image: str = "registry.k8s.io/kubectl:v1.34.0"  # runs the CronJobs' `kubectl patch hpa`
    timezone: str = "Etc/UTC"  # peak hours are counted and CronJobs scheduled in this zone
    port: int = Field(3000, ge=1, le=65535)
    hpa_target_cpu_percent: int = Field(60, ge=1, le=100)
    pdb_min_available: int = Field(1, ge=0)
    startup_seconds: int = Field(180, ge=10)  # model load, Feast registry, Redis pool and warm-up must fit in this
    redis_secret: str = "eta-redis"  # Secret with key `url`: ETA_REDIS_URL (created outside the repo)
    api_key_secret: str = "eta-api-key"  # Secret with key `api-key`: ETA_SERVING__API_KEY
    data_claim: str = "eta-data"  # PersistentVolumeClaim holding the data folder (Feast registry, production pointer)
    data_claim_size: str = "20Gi"
    data_mount: str = "/var/lib/eta"
    spool_mount: str = "/var/spool/eta"  # the serving pod's emptyDir for the prediction log's spool
    # Meal peaks: hours of the week whose mean orders reach peak_share of the busiest hour's, over the newest
    # peak_history_days of orders held; the autoscaler's floor goes up peak_lead_minutes before each peak.
    peak_share: float = Field(0.6, gt=0, le=1)
    peak_history_days: int = Field(28, ge=7)
    peak_lead_minutes: int = Field(30, ge=0, lt=24 * 60)
    # One Deployment each (eta-order, eta-quote), as production runs the Bento's services apart.
    order: ServiceScaling = ServiceScaling(service="EtaOrder", depends_on=["EtaQuote"])
    quote: ServiceScaling = ServiceScaling(service="EtaQuote")

    @property
    def services(self) -> dict[str, ServiceScaling]:
        """Deployment name -> its service."""
        return {"eta-order": self.order, "eta-quote": self.quote}


class StackSettings(BaseModel):
    """`make up`: the local stack, each part on its own port; pids, logs and state in <data dir>/stack."""

    prefect_port: int = Field(4200, ge=1, le=65535)
    # Used when PostgreSQL answers there (the database is created if missing), else SQLite in <data dir>/stack.
    prefect_database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/prefect"
    worker_port: int = Field(8081, ge=1, le=65535)  # the worker's health check
    quote_port: int = Field(3001, ge=1, le=65535)
    order_port: int = Field(3000, ge=1, le=65535)
    evidently_port: int = Field(8000, ge=1, le=65535)
    # Not Debian's 9090: where systemd runs, installing the package starts its own Prometheus there.
    prometheus_port: int = Field(9190, ge=1, le=65535)
    prometheus_binary: Path = Path("/usr/bin/prometheus")
    schedules_active: bool = True  # False registers the deployments paused (a stack beside other work: the tests)
    startup_timeout_s: float = Field(300, gt=0)  # a part not answering by then fails `make up` (hang guard)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ETA_", env_nested_delimiter="__", yaml_file=CONFIG_FILE, extra="ignore"
    )

    data_dir: Path = Path(".eta")
    # Production: `rediss://:<password>@<host>:<port>` from a secret (ETA_REDIS_URL), never the repo.
    redis_url: str = "redis://localhost:6379/0"
    redis_type: Literal["redis", "redis_cluster"] = "redis"  # a cluster: the URL names one seed node
    online_store: Literal["auto", "redis", "sqlite"] = "auto"
    feast_project: str = Field("eta_sim", pattern=r"^[a-z][a-z0-9_]*$")
    model_name: str = "eta_delivery"
    feature_service: str = "eta_delivery_v1"
    features: FeatureSettings = FeatureSettings()
    validation: ValidationSettings = ValidationSettings()
    simulation: SimulationSettings = SimulationSettings()
    training: TrainingSettings = TrainingSettings()
    gate: GateSettings = GateSettings()
    drift: DriftSettings = DriftSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    serving: ServingSettings = ServingSettings()
    prediction_log: PredictionLogSettings = PredictionLogSettings()
    retraining: RetrainingSettings = RetrainingSettings()
    profile: Literal["local", "gcp"] = "local"  # gcp: BigQuery offline store and orders, Memorystore Redis
    gcp: GcpSettings = GcpSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()
    stack: StackSettings = StackSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))

    @property
    def data_path(self) -> Path:
        """Absolute data folder: relative paths are taken from the config file's folder."""
        path = self.data_dir if self.data_dir.is_absolute() else CONFIG_FILE.parent / self.data_dir
        return path.resolve()

    @property
    def project_path(self) -> Path:
        """Everything of one namespace (its Feast project): orders, feature tables, registry, reports."""
        return self.data_path / self.feast_project

    @property
    def orders_path(self) -> Path:
        return self.project_path / "orders.parquet"

    @property
    def features_path(self) -> Path:
        return self.project_path / "features"

    @property
    def reports_path(self) -> Path:
        return self.project_path / "reports"

    def in_namespace(self, namespace: str) -> Settings:
        """The same settings for another source: its own Feast project, data and model name."""
        return self.model_copy(update={"feast_project": namespace, "model_name": f"{namespace}_model"})


@lru_cache
def get_settings() -> Settings:
    return Settings()
