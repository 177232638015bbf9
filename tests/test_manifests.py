"""Kubernetes manifests: rendered by the real `eta manifests` command, validated offline by `kubernetes-validate
--strict` against the Kubernetes version in the settings, meal-peak CronJobs checked against orders of known volume.

No cluster is reachable here: nothing is applied.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from eta.serving.kubernetes import WORK_POOL_TEMPLATE
from eta.settings import Settings
from eta.storage import write_table

BIN = Path(sys.executable).parent
MONDAY = pd.Timestamp("2026-11-02", tz="UTC")  # two whole weeks of orders from this Monday
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
LEAD = 90  # minutes, set through the environment as a deployment would


def _orders_per_hour(day: int, hour: int) -> int:
    """The known volume: 1 order an hour, and peaks: weekday lunch 12-14 (10/h), dinner 18-21 every day (12/h),
    Sunday 23:00 - Monday 01:00 across the week's end (9/h), Friday 16-17 (8/h: 60 min before dinner, within the
    lead time, so one window), Saturday 15-16 (8/h: 120 min before dinner, its own window), Tuesday 03-04
    (7/h: under 60% of the busiest hour's 12, no peak)."""
    if hour in (18, 19, 20):
        return 12
    if day < 5 and hour in (12, 13):
        return 10
    if (day == 6 and hour == 23) or (day == 0 and hour == 0):
        return 9
    if (day == 4 and hour == 16) or (day == 5 and hour == 15):
        return 8
    if day == 1 and hour == 3:
        return 7
    return 1


# The windows the volume above makes, typed from its construction: (day, start hour, day, end hour).
EXPECTED_WINDOWS = (
    [(6, 23, 0, 1)]
    + [(day, 12, day, 14) for day in range(5)]
    + [(day, 18, day, 21) for day in range(7) if day != 4]
    + [(4, 16, 4, 21), (5, 15, 5, 16)]
)


@pytest.fixture(scope="module")
def peak_namespace(settings: Settings) -> str:
    """A namespace whose held orders have the known hour-of-week volume (two weeks, every hour)."""
    namespace = "eta_k8s_peaks"
    created = []
    for week in range(2):
        for day in range(7):
            for hour in range(24):
                start = MONDAY + pd.Timedelta(days=7 * week + day, hours=hour)
                count = _orders_per_hour(day, hour)
                created += [start + pd.Timedelta(minutes=60 * i / count + 1) for i in range(count)]
    orders = pd.DataFrame({"order_id": [f"o{i}" for i in range(len(created))], "created_at": created})
    write_table(orders, settings.in_namespace(namespace).orders_path)
    return namespace


def _eta(*args: str, **env: str) -> str:
    result = subprocess.run([str(BIN / "eta"), *args], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "ETA_KUBERNETES__PEAK_LEAD_MINUTES": str(LEAD), **env})
    assert result.returncode == 0, result.stderr
    return result.stdout


def _kubernetes_validate(stream: str, version: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--kubernetes-version", version, "-"],
                          input=stream, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def stream(peak_namespace: str) -> str:
    return _eta("manifests", "--namespace", peak_namespace)


@pytest.fixture(scope="module")
def docs(stream: str) -> list[dict]:
    return list(yaml.safe_load_all(stream))


def _of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def test_the_stream_validates_strictly_against_the_stated_kubernetes_version(stream, docs, settings):
    version = settings.kubernetes.version
    result = _kubernetes_validate(stream, version)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = [line for line in result.stdout.splitlines() if "passed" in line]
    assert len(passed) == len(docs) and all(f"against version {version.rsplit('.', 1)[0]}" in line for line in passed)
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "CronJob", "Role",
            "RoleBinding", "ServiceAccount"} <= kinds
    broken = stream.replace("minReplicas:", "minReplica:", 1)  # a field the schema does not know
    assert _kubernetes_validate(broken, version).returncode != 0, "--strict must reject an unknown field"


def test_no_secret_value_appears_and_secrets_are_referenced_by_name(peak_namespace, settings):
    password, api_key = "pw-7f3a9c-do-not-render", "key-51d0e2-do-not-render"
    secrets = {"ETA_REDIS_URL": f"rediss://:{password}@redis.internal:6378/0", "ETA_SERVING__API_KEY": api_key}
    stream = _eta("manifests", "--namespace", peak_namespace, **secrets)
    template = _eta("work-pool-template", **secrets)
    for rendered in (stream, template):
        assert password not in rendered and api_key not in rendered and "redis.internal" not in rendered
    for deployment in _of_kind(list(yaml.safe_load_all(stream)), "Deployment").values():
        env = {item["name"]: item for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["ETA_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": settings.kubernetes.redis_secret, "key": "url"}
        assert env["ETA_SERVING__API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == settings.kubernetes.api_key_secret
        assert env["ETA_FEAST_PROJECT"]["value"] == peak_namespace, "non-secret settings are rendered as values"


def _cron(minute_of_week: int) -> tuple[str, str]:
    """(HHMM, cron schedule for that one day): cron counts days from Sunday = 0."""
    minute_of_week %= 7 * 1440
    day, minute = divmod(minute_of_week, 1440)
    return f"{minute // 60:02d}{minute % 60:02d}", f"{minute % 60} {minute // 60} * * {(day + 1) % 7}"


def _grouped(moments: list[int]) -> set[str]:
    days: dict[str, set[str]] = {}
    for moment in moments:
        time, schedule = _cron(moment)
        days.setdefault(schedule.rsplit(" ", 1)[0], set()).add(schedule.rsplit(" ", 1)[1])
    return {f"{at} {','.join(sorted(ds))}" for at, ds in days.items()}


def test_cronjobs_scale_each_autoscaler_up_before_the_known_peaks_and_down_after(docs, peak_namespace, settings):
    starts = [day * 1440 + hour * 60 for day, hour, _, _ in EXPECTED_WINDOWS]
    ends = [end_day * 1440 + end_hour * 60 for _, _, end_day, end_hour in EXPECTED_WINDOWS]
    expected_up, expected_down = _grouped([start - LEAD for start in starts]), _grouped(ends)

    peaks = json.loads(_eta("peaks", "--namespace", peak_namespace))
    assert sorted((p["start_at"], p["end_at"]) for p in peaks) == sorted(
        (f"{DAYS[d]} {h:02d}:00", f"{DAYS[ed]} {eh:02d}:00") for d, h, ed, eh in EXPECTED_WINDOWS)

    cronjobs = _of_kind(docs, "CronJob").values()
    for name, scaling in settings.kubernetes.services.items():
        for direction, expected, replicas in (("up", expected_up, scaling.peak_replicas),
                                              ("down", expected_down, scaling.min_replicas)):
            jobs = [job for job in cronjobs if job["metadata"]["name"].startswith(f"{name}-peak-{direction}-")]
            assert {job["spec"]["schedule"] for job in jobs} == expected, (name, direction)
            for job in jobs:
                assert job["spec"]["timeZone"] == settings.kubernetes.timezone
                pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
                args = pod["containers"][0]["args"]
                assert args[:3] == ["patch", "hpa", name]
                assert json.loads(args[args.index("--patch") + 1]) == {"spec": {"minReplicas": replicas}}
                assert pod["serviceAccountName"] == "eta-peak-scaler"
    role = _of_kind(docs, "Role")["eta-peak-scaler"]
    assert role["rules"] == [{"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"],
                              "resourceNames": sorted(settings.kubernetes.services), "verbs": ["get", "patch"]}]


def test_autoscalers_probes_and_resources_are_as_configured(peak_namespace, monkeypatch):
    for name, value in {"QUOTE__MAX_REPLICAS": "7", "ORDER__MIN_REPLICAS": "3", "HPA_TARGET_CPU_PERCENT": "55"}.items():
        monkeypatch.setenv(f"ETA_KUBERNETES__{name}", value)
    docs = list(yaml.safe_load_all(_eta("manifests", "--namespace", peak_namespace)))
    settings = Settings()
    hpas, deployments = _of_kind(docs, "HorizontalPodAutoscaler"), _of_kind(docs, "Deployment")
    assert (hpas["eta-order"]["spec"]["minReplicas"], hpas["eta-quote"]["spec"]["maxReplicas"]) == (3, 7)
    for name, scaling in settings.kubernetes.services.items():
        spec = hpas[name]["spec"]
        assert (spec["minReplicas"], spec["maxReplicas"]) == (scaling.min_replicas, scaling.max_replicas)
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert spec["metrics"][0]["resource"]["target"]["averageUtilization"] == 55
        pod = deployments[name]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["args"][:3] == ["start-http-server", "--service-name", scaling.service]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
        assert container["resources"] == {"requests": {"cpu": scaling.cpu_request, "memory": scaling.memory_request},
                                          "limits": {"cpu": scaling.cpu_limit, "memory": scaling.memory_limit}}
        assert "replicas" not in deployments[name]["spec"], "the autoscaler owns the count"
        # The data volume is read-only to the services: the prediction log's spool is a folder of the pod's own.
        env = {variable["name"]: variable.get("value") for variable in container["env"]}
        mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert mounts["data"]["readOnly"] and volumes["data"]["persistentVolumeClaim"]["readOnly"]
        assert env["ETA_PREDICTION_LOG__SPOOL_DIR"] == mounts["prediction-spool"]["mountPath"]
        assert not mounts["prediction-spool"].get("readOnly") and volumes["prediction-spool"] == {
            "name": "prediction-spool", "emptyDir": {}}
        assert _of_kind(docs, "PodDisruptionBudget")[name]["spec"]["minAvailable"] == settings.kubernetes.pdb_min_available
    order_args = deployments["eta-order"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert order_args[order_args.index("--depends") + 1] == f"EtaQuote=http://eta-quote:{settings.kubernetes.port}"


def test_the_work_pool_template_in_the_repo_is_eta_yaml_rendered_and_its_job_validates():
    from prefect.utilities.templating import apply_values

    # Rendered from eta.yaml alone, as `eta work-pool-template` prints it outside the test session.
    clean_env = {key: value for key, value in os.environ.items() if not key.startswith("ETA_")}
    result = subprocess.run([str(BIN / "eta"), "work-pool-template"], capture_output=True, text=True, timeout=300,
                            env=clean_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(WORK_POOL_TEMPLATE.read_text()), "re-render: eta work-pool-template"

    template = json.loads(WORK_POOL_TEMPLATE.read_text())
    values = {name: schema.get("default") for name, schema in template["variables"]["properties"].items()}
    assert values["env"]["ETA_DATA_DIR"] == Settings().kubernetes.data_mount and "ETA_REDIS_URL" not in values["env"]
    job = apply_values(template["job_configuration"]["job_manifest"], {**values, "name": "eta-ingest"})
    pod = job["spec"]["template"]["spec"]
    # What the worker does before creating the Job: the command as args, unset values dropped. prefect-kubernetes
    # demands `parallelism`/`completions` at the pod level (its validator checks for them; the API server ignores
    # them), so they are there and are taken out for the strict schema.
    assert (pod.pop("parallelism"), pod.pop("completions")) == (1, 1)
    container = pod["containers"][0]
    container["args"] = ["prefect", "flow-run", "execute"]
    container["resources"]["limits"] = {k: v for k, v in container["resources"]["limits"].items() if v is not None}
    for parent, key in ((job["metadata"], "annotations"), (job["metadata"], "labels"), (pod, "serviceAccountName")):
        if parent[key] is None:
            del parent[key]
    job["metadata"]["name"] = job["metadata"]["generateName"] + "x7k2p"  # the API server names it from generateName
    result = _kubernetes_validate(yaml.safe_dump(job), Settings().kubernetes.version)
    assert result.returncode == 0, result.stdout + result.stderr
    assert container["env"] == [{"name": "ETA_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "eta-redis", "key": "url"}}}]


def test_a_week_without_an_off_peak_gap_longer_than_the_lead_schedules_nothing():
    from eta.serving.meal_peaks import merge_windows

    assert merge_windows(list(range(7 * 24)), 30) == []
    assert merge_windows([hour for hour in range(7 * 24) if hour != 50], 60) == [], "a one-hour gap within a 60-minute lead"
    assert len(merge_windows([hour for hour in range(7 * 24) if hour != 50], 30)) == 1
