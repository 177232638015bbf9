"""Kubernetes manifests and the Prefect Kubernetes work pool's job template, rendered from the settings.

Production runs each Bento service as its own Deployment (`start-http-server --service-name ...`, the
Bento image's per-service entry point), behind a Service, scaled on CPU by a HorizontalPodAutoscaler
and kept through node drains by a PodDisruptionBudget. Before each meal peak (computed from the orders
held, `eta.serving.meal_peaks`) a CronJob raises the autoscaler's floor to `peak_replicas`, so the pods are up
and warm (`/readyz`) when the orders come; when the peak ends another sets it back to `min_replicas`.
Secrets are referenced by name only: no value from the settings' secret fields is ever rendered.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import yaml

from eta.serving.meal_peaks import MINUTES_PER_WEEK, PeakWindow
from eta.settings import PROJECT_ROOT, ServiceScaling, Settings

Manifest = dict[str, Any]
PEAK_SCALER = "eta-peak-scaler"
# Environment variables whose values are secrets: each comes from (Secret in kubernetes settings, key).
SECRET_ENV = {"ETA_REDIS_URL": ("redis_secret", "url"), "ETA_SERVING__API_KEY": ("api_key_secret", "api-key")}
# Top-level settings a pod must not take from this machine: the data folder is the mounted claim.
_NOT_RENDERED = {"data_dir", "redis_url"}


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "eta", "app.kubernetes.io/component": component}


def _metadata(settings: Settings, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": settings.kubernetes.namespace, "labels": _labels(component)}


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)  # pydantic-settings parses complex values from JSON
    return str(value)


def _section_env(prefix: str, section: Any) -> dict[str, str]:
    env = {}
    for field in type(section).model_fields:
        name = f"{prefix}{field.upper()}"
        value = getattr(section, field)
        if name not in SECRET_ENV and value is not None and not hasattr(value, "get_secret_value"):
            env[name] = _env_value(value)
    return env


def settings_env(settings: Settings, sections: tuple[str, ...] = ()) -> dict[str, str]:
    """Non-secret ETA_* values: the top-level settings and the named sections; the data folder is the claim's mount."""
    env = {"ETA_DATA_DIR": settings.kubernetes.data_mount}
    for field in type(settings).model_fields:
        value = getattr(settings, field)
        if field not in _NOT_RENDERED and not hasattr(value, "model_fields") and value is not None:
            env[f"ETA_{field.upper()}"] = _env_value(value)
    for section in sections:
        env.update(_section_env(f"ETA_{section.upper()}__", getattr(settings, section)))
    return env


def secret_env(settings: Settings, names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{"name": name, "valueFrom": {"secretKeyRef": {
        "name": getattr(settings.kubernetes, SECRET_ENV[name][0]), "key": SECRET_ENV[name][1]}}} for name in names]


def _data_volume(settings: Settings, read_only: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    volume = {"name": "data", "persistentVolumeClaim": {"claimName": settings.kubernetes.data_claim,
                                                        "readOnly": read_only}}
    return volume, {"name": "data", "mountPath": settings.kubernetes.data_mount, "readOnly": read_only}


def deployment(settings: Settings, name: str, scaling: ServiceScaling) -> Manifest:
    k8s = settings.kubernetes
    args = ["start-http-server", "--service-name", scaling.service, "--host", "0.0.0.0", "--port", str(k8s.port)]
    for dependency in scaling.depends_on:  # a dependency is called at its own Service, not started in this pod
        args += ["--depends", f"{dependency}=http://{_deployment_of(settings, dependency)}:{k8s.port}"]
    sections = ("gcp", "serving") if settings.profile == "gcp" else ("serving",)
    env = [{"name": key, "value": value} for key, value in settings_env(settings, sections).items()]
    # The prediction log appends each answer's record to a spool before shipping it to Redis: a folder of the
    # pod's own, kept across container restarts (a restarted worker ships what the dead one left); a pod
    # stopping ships its spool first (BentoML's shutdown hook, inside terminationGracePeriodSeconds).
    env.append({"name": "ETA_PREDICTION_LOG__SPOOL_DIR", "value": k8s.spool_mount})
    volume, mount = _data_volume(settings, read_only=True)
    spool = {"name": "prediction-spool", "emptyDir": {}}
    probe = {"port": "http"}
    period = 5
    container = {
        "name": name,
        "image": k8s.image,
        "args": args,
        "ports": [{"name": "http", "containerPort": k8s.port}],
        "env": env + secret_env(settings, tuple(SECRET_ENV)),
        "resources": {"requests": {"cpu": scaling.cpu_request, "memory": scaling.memory_request},
                      "limits": {"cpu": scaling.cpu_limit, "memory": scaling.memory_limit}},
        # The process answers /livez once up; /readyz only after model, registry, Redis pool and warm-up.
        "startupProbe": {"httpGet": {"path": "/livez", **probe}, "periodSeconds": period,
                         "failureThreshold": -(-k8s.startup_seconds // period)},
        "livenessProbe": {"httpGet": {"path": "/livez", **probe}, "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", **probe}, "periodSeconds": period, "failureThreshold": 2},
        "volumeMounts": [mount, {"name": spool["name"], "mountPath": k8s.spool_mount}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(settings, name, name),
        # No `replicas`: the autoscaler owns the count (a re-apply must not reset it mid-peak).
        "spec": {
            "selector": {"matchLabels": _labels(name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": _labels(name)},
                         "spec": {"containers": [container], "volumes": [volume, spool]}},
        },
    }


def _deployment_of(settings: Settings, service: str) -> str:
    return next(name for name, scaling in settings.kubernetes.services.items() if scaling.service == service)


def service(settings: Settings, name: str) -> Manifest:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(settings, name, name),
            "spec": {"selector": _labels(name),
                     "ports": [{"name": "http", "port": settings.kubernetes.port, "targetPort": "http"}]}}


def autoscaler(settings: Settings, name: str, scaling: ServiceScaling) -> Manifest:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(settings, name, name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": settings.kubernetes.hpa_target_cpu_percent}}}],
        },
    }


def disruption_budget(settings: Settings, name: str) -> Manifest:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _metadata(settings, name, name),
            "spec": {"minAvailable": settings.kubernetes.pdb_min_available,
                     "selector": {"matchLabels": _labels(name)}}}


def peak_scaler_access(settings: Settings) -> list[Manifest]:
    """The CronJobs' identity: it may read and patch the services' autoscalers, nothing else."""
    meta = _metadata(settings, PEAK_SCALER, PEAK_SCALER)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
         # kubectl patch reads the object before it patches it: get + patch, on these autoscalers only.
         "rules": [{"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"],
                    "resourceNames": sorted(settings.kubernetes.services), "verbs": ["get", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": PEAK_SCALER},
         "subjects": [{"kind": "ServiceAccount", "name": PEAK_SCALER, "namespace": settings.kubernetes.namespace}]},
    ]


def cron_schedules(minutes_of_week: list[int]) -> dict[str, str]:
    """Moments of the week as cron schedules, one per time of day with its days: {"1130": "30 11 * * 1,2"}."""
    days_at: dict[int, set[int]] = defaultdict(set)
    for minute in minutes_of_week:
        minute %= MINUTES_PER_WEEK
        days_at[minute % 1440].add((minute // 1440 + 1) % 7)  # cron counts days from Sunday = 0; ours from Monday
    return {f"{time // 60:02d}{time % 60:02d}": f"{time % 60} {time // 60} * * {','.join(map(str, sorted(days)))}"
            for time, days in sorted(days_at.items())}


def _patch_job(settings: Settings, name: str, schedule: str, hpa: str, min_replicas: int) -> Manifest:
    patch = json.dumps({"spec": {"minReplicas": min_replicas}}, separators=(",", ":"))
    container = {"name": "patch-hpa", "image": settings.kubernetes.kubectl_image,
                 "args": ["patch", "hpa", hpa, "--namespace", settings.kubernetes.namespace, "--type=merge",
                          "--patch", patch],
                 "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}}
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": _metadata(settings, name, PEAK_SCALER),
        "spec": {
            "schedule": schedule,
            "timeZone": settings.kubernetes.timezone,
            "concurrencyPolicy": "Forbid",
            # Missed by a controller restart: still worth running within 10 minutes, not later.
            "startingDeadlineSeconds": 600,
            "successfulJobsHistoryLimit": 1,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"spec": {"backoffLimit": 4, "ttlSecondsAfterFinished": 3600, "template": {
                "metadata": {"labels": _labels(PEAK_SCALER)},
                "spec": {"serviceAccountName": PEAK_SCALER, "restartPolicy": "OnFailure", "containers": [container]},
            }}},
        },
    }


def peak_cronjobs(settings: Settings, windows: list[PeakWindow]) -> list[Manifest]:
    """Per service: floor up to peak_replicas at each window's scale-up moment, back to min_replicas at its end."""
    jobs = []
    for name, scaling in settings.kubernetes.services.items():
        for direction, moments, replicas in (("up", [w.scale_up for w in windows], scaling.peak_replicas),
                                             ("down", [w.end for w in windows], scaling.min_replicas)):
            for time, schedule in cron_schedules(moments).items():
                jobs.append(_patch_job(settings, f"{name}-peak-{direction}-{time}", schedule, name, replicas))
    return jobs


def manifests(settings: Settings, windows: list[PeakWindow]) -> list[Manifest]:
    """Everything `kubectl apply -f -` needs, given the Secrets (created apart) and the meal peaks."""
    k8s = settings.kubernetes
    docs: list[Manifest] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": k8s.namespace, "labels": _labels("namespace")}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _metadata(settings, k8s.data_claim, "data"),
         "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": k8s.data_claim_size}}}},
    ]
    for name, scaling in k8s.services.items():
        docs += [deployment(settings, name, scaling), service(settings, name), autoscaler(settings, name, scaling),
                 disruption_budget(settings, name)]
    return docs + peak_scaler_access(settings) + peak_cronjobs(settings, windows)


def yaml_stream(docs: list[Manifest]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)


DEPLOY_PREFECT = PROJECT_ROOT / "deploy" / "prefect"
# prefect-kubernetes 0.8.0's `KubernetesWorker.get_default_base_job_template()` (with Prefect 3.9.1), as it printed it.
PREFECT_KUBERNETES_DEFAULT = DEPLOY_PREFECT / "prefect-kubernetes-0.8.0-default.json"
WORK_POOL_TEMPLATE = DEPLOY_PREFECT / "kubernetes-base-job-template.json"  # work_pool_template(eta.yaml's settings)


def work_pool_template(settings: Settings) -> dict[str, Any]:
    """The Prefect Kubernetes work pool's base job template: prefect-kubernetes 0.8.0's default, with the flows'
    image, namespace, resources, non-secret settings as default env, the Redis URL from its Secret and the data
    claim mounted read-write (flows write the Feast registry and the production pointer the services read)."""
    k8s = settings.kubernetes
    volume, mount = _data_volume(settings, read_only=False)
    template = json.loads(PREFECT_KUBERNETES_DEFAULT.read_text())
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    # A list, not "{{ env }}": the worker then prepends the run's env (Prefect's and the `env` variable) to it.
    container["env"] = secret_env(settings, ("ETA_REDIS_URL",))
    container["volumeMounts"] = [mount]
    template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["volumes"] = [volume]
    defaults = {"image": k8s.flows_image, "namespace": k8s.namespace, "env": settings_env(settings),
                "cpu_request": "1", "memory_request": "2Gi", "memory_limit": "4Gi", "finished_job_ttl": 86400}
    for variable, default in defaults.items():
        template["variables"]["properties"][variable]["default"] = default
    return template
