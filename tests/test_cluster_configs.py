"""cluster/: the launcher YAML against the installed Ray's cluster schema, the KubeRay manifests against
the fields of KubeRay's CRDs, and every command (cluster/ configs, the bash blocks of README.md,
cluster/README.md and cluster/mlflow/README.md) naming a script that exists, with flags it accepts."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from dctdiff.commands import SUBCOMMANDS

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER = CLUSTER / "aws-gpu.yaml"
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
GUIDES = [REPO / "README.md", CLUSTER / "README.md", CLUSTER / "mlflow" / "README.md"]  # their bash blocks
IMAGE_ROOT = "/home/ray/dctdiff/"  # where cluster/Dockerfile puts the repository
REPO_DIRS = ("pipelines", "cluster", "tune", "dctdiff", "tests", "benchmarks")
IMAGE = r"rayproject/ray:(\S+)-py(3\d+)-gpu"  # Ray's GPU image: (Ray version, Python version)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_every_yaml_and_json_in_cluster_parses_to_a_mapping():
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert {LAUNCHER, CLUSTER / "runtime_env.yaml", *KUBERAY} <= set(files) and len(KUBERAY) == 2
    for path in files:
        assert isinstance(load(path), dict), path
    policies = sorted((CLUSTER / "aws").glob("*.json"))
    assert len(policies) == 3
    for path in policies:
        assert json.loads(path.read_text())["Version"] == "2012-10-17", path


# --------------------------------------------------------------------------------------------------
# Ray cluster launcher
# --------------------------------------------------------------------------------------------------


def makefile_torch_version() -> str:
    return re.search(r"^TORCH_VERSION \?= (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)


def ray_schema() -> dict:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def test_launcher_config_validates_against_the_installed_ray_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(LAUNCHER)
    jsonschema.validate(config, ray_schema())
    validate_config(prepare_config(config))  # Ray's own checks after filling in the AWS defaults
    # the schema check has teeth: a misspelt option is rejected
    with pytest.raises(jsonschema.ValidationError, match="setup_command"):
        jsonschema.validate({**config, "setup_command": []}, ray_schema())


def test_launcher_matches_the_project_and_keeps_ray_private():
    config = load(LAUNCHER)
    assert re.fullmatch(IMAGE, config["docker"]["image"]).groups() == (ray.__version__, "311")
    setup = " ".join(config["setup_commands"])
    assert re.findall(r"torch==(\S+)", setup) == [makefile_torch_version()] * 2
    assert "--index-url https://download.pytorch.org/whl/cu" in setup  # a CUDA build, not the CPU wheel
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["resources"]["GPU"] >= 1 and workers["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert 1 <= workers["min_workers"] <= workers["max_workers"] <= config["max_workers"]
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # the job API is reached through an SSH tunnel
    for command in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token ray start" in command
    for remote, local in config["file_mounts"].items():
        if local.startswith("~"):
            assert remote == "/home/ray/.ray/auth_token" and local == "~/.ray/auth_token"
        else:
            assert (REPO / local).exists(), local


def test_dockerfile_matches_the_project():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^FROM {IMAGE}$", text, re.M).groups() == (ray.__version__, "311")  # as the launcher
    assert re.search(r"^ARG TORCH_VERSION=(\S+)$", text, re.M).group(1) == makefile_torch_version()
    ignored = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "outputs", ".git"} <= set(ignored)


# --------------------------------------------------------------------------------------------------
# KubeRay: no schema of KubeRay's CRDs ships offline, so the allowed fields are written out here from
# KubeRay's v1 API types (ray-operator/apis/ray/v1/{rayjob,raycluster}_types.go, KubeRay 1.5.1:
# RayJobSpec, RayClusterSpec, HeadGroupSpec, WorkerGroupSpec, AutoscalerOptions, AuthOptions) and,
# for the pod templates, Kubernetes core/v1 (PodTemplateSpec, PodSpec, Container, Volume). Only what a
# manifest may contain is listed; a field outside these tables is a typo or a field of another version.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    fields: dict[str, Any]
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class ListOf:
    item: Any


@dataclass(frozen=True)
class MapOf:
    value: Any


@dataclass(frozen=True)
class OneOf:
    values: tuple[str, ...]


ANY = object()  # free-form (service specs, probes, affinity...): not checked further
QUANTITY = (str, int, float)
STR_MAP = MapOf(str)
META = Obj({"name": str, "namespace": str, "labels": STR_MAP, "annotations": STR_MAP, "generateName": str})
RESOURCES = Obj({"requests": MapOf(QUANTITY), "limits": MapOf(QUANTITY), "claims": ANY})
ENV = Obj({"name": str, "value": str, "valueFrom": ANY}, required=("name",))
CONTAINER = Obj(
    {
        "name": str, "image": str, "imagePullPolicy": OneOf(("Always", "IfNotPresent", "Never")),
        "command": ListOf(str), "args": ListOf(str), "workingDir": str, "env": ListOf(ENV), "envFrom": ANY,
        "resources": RESOURCES, "ports": ANY, "volumeMounts": ListOf(Obj(
            {"name": str, "mountPath": str, "readOnly": bool, "subPath": str}, required=("name", "mountPath"))),
        "lifecycle": ANY, "livenessProbe": ANY, "readinessProbe": ANY, "startupProbe": ANY,
        "securityContext": ANY, "stdin": bool, "tty": bool, "terminationMessagePath": str,
        "terminationMessagePolicy": str, "volumeDevices": ANY, "resizePolicy": ANY, "restartPolicy": str,
    },
    required=("name",),
)  # fmt: skip
VOLUME = Obj(
    {"name": str, "emptyDir": Obj({"medium": str, "sizeLimit": QUANTITY}), "persistentVolumeClaim": ANY,
     "configMap": ANY, "secret": ANY, "hostPath": ANY, "csi": ANY, "nfs": ANY, "ephemeral": ANY, "projected": ANY},
    required=("name",),
)  # fmt: skip
POD_SPEC = Obj(
    {
        "containers": ListOf(CONTAINER), "initContainers": ListOf(CONTAINER), "volumes": ListOf(VOLUME),
        "serviceAccountName": str, "nodeSelector": STR_MAP, "tolerations": ListOf(Obj(
            {"key": str, "operator": OneOf(("Exists", "Equal")), "value": str, "effect": str,
             "tolerationSeconds": int})),
        "affinity": ANY, "topologySpreadConstraints": ANY, "priorityClassName": str, "restartPolicy": str,
        "imagePullSecrets": ANY, "securityContext": ANY, "terminationGracePeriodSeconds": int,
        "runtimeClassName": str, "schedulerName": str, "hostNetwork": bool, "dnsPolicy": str,
        "enableServiceLinks": bool, "automountServiceAccountToken": bool, "shareProcessNamespace": bool,
    },
    required=("containers",),
)  # fmt: skip
POD_TEMPLATE = Obj({"metadata": META, "spec": POD_SPEC}, required=("spec",))
HEAD_GROUP = Obj(
    {"template": POD_TEMPLATE, "headService": ANY, "enableIngress": bool, "rayStartParams": STR_MAP,
     "serviceType": str},
    required=("template",),
)  # fmt: skip
WORKER_GROUP = Obj(
    {"groupName": str, "replicas": int, "minReplicas": int, "maxReplicas": int, "idleTimeoutSeconds": int,
     "rayStartParams": STR_MAP, "template": POD_TEMPLATE, "scaleStrategy": Obj({"workersToDelete": ListOf(str)}),
     "numOfHosts": int, "suspend": bool},
    required=("groupName", "template"),
)  # fmt: skip
RAY_CLUSTER_SPEC = Obj(
    {
        "rayVersion": str, "enableInTreeAutoscaling": bool, "headGroupSpec": HEAD_GROUP,
        "workerGroupSpecs": ListOf(WORKER_GROUP), "headServiceAnnotations": STR_MAP, "suspend": bool,
        "managedBy": str, "gcsFaultToleranceOptions": ANY, "authOptions": Obj({"mode": OneOf(("disabled", "token"))}),
        "autoscalerOptions": Obj({"upscalingMode": OneOf(("Default", "Aggressive", "Conservative")),
                                  "idleTimeoutSeconds": int, "resources": RESOURCES, "image": str,
                                  "imagePullPolicy": str, "env": ListOf(ENV), "envFrom": ANY,
                                  "securityContext": ANY, "volumeMounts": ANY}),
    },
    required=("headGroupSpec",),
)  # fmt: skip
RAY_JOB = Obj(
    {
        "apiVersion": OneOf(("ray.io/v1",)), "kind": OneOf(("RayJob",)), "metadata": META,
        "spec": Obj(
            {
                "entrypoint": str, "runtimeEnvYAML": str, "jobId": str, "metadata": STR_MAP,
                "shutdownAfterJobFinishes": bool, "ttlSecondsAfterFinished": int, "activeDeadlineSeconds": int,
                "backoffLimit": int, "rayClusterSpec": RAY_CLUSTER_SPEC, "clusterSelector": STR_MAP,
                "submitterPodTemplate": POD_TEMPLATE, "submitterConfig": Obj({"backoffLimit": int}),
                "submissionMode": OneOf(("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")),
                "entrypointNumCpus": (int, float), "entrypointNumGpus": (int, float), "entrypointResources": str,
                "managedBy": str, "deletionPolicy": str, "suspend": bool,
            },
            required=("entrypoint",),
        ),
    },
    required=("apiVersion", "kind", "metadata", "spec"),
)  # fmt: skip


def violations(value: Any, schema: Any, where: str = "") -> list[str]:
    """Every place where ``value`` leaves ``schema`` (unknown field, missing field, wrong type or value)."""
    if schema is ANY:
        return []
    if isinstance(schema, Obj):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping, got {type(value).__name__}"]
        found = [f"{where}.{k}: not a field here" for k in value if k not in schema.fields]
        found += [f"{where}.{k}: required" for k in schema.required if k not in value]
        for key, sub in value.items():
            if key in schema.fields:
                found += violations(sub, schema.fields[key], f"{where}.{key}")
        return found
    if isinstance(schema, ListOf):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [v for i, item in enumerate(value) for v in violations(item, schema.item, f"{where}[{i}]")]
    if isinstance(schema, MapOf):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        return [v for k, item in value.items() for v in violations(item, schema.value, f"{where}.{k}")]
    if isinstance(schema, OneOf):
        return [] if value in schema.values else [f"{where}: {value!r} is not one of {schema.values}"]
    types = schema if isinstance(schema, tuple) else (schema,)
    if isinstance(value, bool) and bool not in types:  # YAML `true` is not a string or a number here
        return [f"{where}: expected {types}, got a boolean"]
    return [] if isinstance(value, types) else [f"{where}: expected {types}, got {type(value).__name__} {value!r}"]


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_names_only_crd_fields(path):
    assert violations(load(path), RAY_JOB) == []


def test_field_check_catches_typos_and_wrong_types():
    manifest = load(CLUSTER / "kuberay" / "train-job.yaml")
    manifest["spec"]["shutdownAfterJobFinish"] = True
    manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"] = {"num-gpus": 1}
    del manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]
    assert violations(manifest, RAY_JOB) == [
        ".spec.shutdownAfterJobFinish: not a field here",
        ".spec.rayClusterSpec.workerGroupSpecs[0].groupName: required",
        ".spec.rayClusterSpec.workerGroupSpecs[0].rayStartParams.num-gpus: expected (<class 'str'>,), got int 1",
    ]


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_train_job_asks_for_exactly_the_gpus_its_cluster_has():
    manifest = load(CLUSTER / "kuberay" / "train-job.yaml")
    spec = manifest["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == ray.__version__
    command = shlex.split(manifest["spec"]["entrypoint"])
    (group,) = spec["workerGroupSpecs"]
    gpus = group["template"]["spec"]["containers"][0]["resources"]
    assert gpus["requests"]["nvidia.com/gpu"] == gpus["limits"]["nvidia.com/gpu"] == flag(command, "--gpus-per-worker")
    # train.py checks the GPUs before it starts: the group must be up at that size, not autoscaled to it
    assert group["replicas"] == group["minReplicas"] == int(flag(command, "--workers"))
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"


def test_kuberay_clusters_use_token_auth_and_one_image():
    for path in KUBERAY:
        spec = load(path)["spec"]["rayClusterSpec"]
        assert spec["authOptions"] == {"mode": "token"}, path
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
        assert images == {"REGISTRY/dctdiff:TAG"}, path


# --------------------------------------------------------------------------------------------------
# runtime_env and the environment the jobs read
# --------------------------------------------------------------------------------------------------


def test_runtime_env_has_only_ray_fields_and_the_jobs_read_its_variables(monkeypatch):
    from ray.runtime_env import RuntimeEnv

    from dctdiff.infra.mlflow_tracking import resolve_tracking_uri

    runtime_env = load(CLUSTER / "runtime_env.yaml")
    assert set(runtime_env) <= set(RuntimeEnv.known_fields)
    RuntimeEnv(**runtime_env)  # Ray's own validation
    env = runtime_env["env_vars"]
    assert all(isinstance(v, str) for v in env.values())
    assert set(env) == {"MLFLOW_TRACKING_URI", "DCTDIFF_STORAGE"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert resolve_tracking_uri(None) == env["MLFLOW_TRACKING_URI"]
    train = importlib.import_module("dctdiff.commands.train_command")
    options = train.parse_args(["--dry-run"]).options
    assert options.storage == env["DCTDIFF_STORAGE"]


SECRET_PATTERNS = [
    r"AKIA[0-9A-Z]{16}",  # an AWS access key id
    r"(?i)aws_secret_access_key\s*[:=]\s*\S{8,}",
    r"://[^/\s:@]+:[^/\s@*]+@",  # user:password@host in a URI
    r"(?i)(password|token)\s*:\s*['\"]?[A-Za-z0-9+/]{8,}",
]


def test_no_credentials_in_cluster_files():
    for path in sorted(p for p in CLUSTER.rglob("*") if p.is_file()):
        text = path.read_text()
        for pattern in SECRET_PATTERNS:
            assert not re.search(pattern, text), f"{path}: {pattern}"


# --------------------------------------------------------------------------------------------------
# Commands: every `python SCRIPT ...` names a script of the repo and only flags it accepts
# --------------------------------------------------------------------------------------------------


@dataclass
class Command:
    source: str
    tokens: list[str] = field(default_factory=list)


SHELL_BLOCK = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.S)
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", ">", ">>", "<", "$("}


PLACEHOLDER = re.compile(r"<([A-Za-z][\w -]*)>")  # `--run-id <training run>` in a guide: one argument


def shell_commands(text: str, source: str) -> list[Command]:
    """Split shell text into simple commands (continuations joined, comments and placeholders' <> dropped)."""
    commands = []
    text = PLACEHOLDER.sub(lambda m: m.group(1).replace(" ", "_"), text.replace("\\\n", " "))
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        current = Command(source)
        for token in lexer:
            if token in OPERATORS or set(token) <= set("&|;()<>"):
                commands.append(current)
                current = Command(source)
            else:
                current.tokens.append(token)
        commands.append(current)
    return [c for c in commands if c.tokens]


def all_commands() -> list[Command]:
    commands = []
    for guide in GUIDES:
        for block in SHELL_BLOCK.findall(guide.read_text()):
            commands += shell_commands(block, str(guide.relative_to(REPO)))
    launcher = load(LAUNCHER)
    for key in ("setup_commands", "head_setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        for line in launcher[key]:
            commands += shell_commands(line, f"{LAUNCHER.name}:{key}")
    for path in KUBERAY:
        commands += shell_commands(load(path)["spec"]["entrypoint"], path.name)
    return commands


def repo_path(token: str) -> str | None:
    """The repository-relative path a token names (also inside the image or after --flag=), if any."""
    token = token.split("=", 1)[-1].removeprefix(IMAGE_ROOT).removeprefix("file://")
    return token if token.split("/", 1)[0] in REPO_DIRS and "/" in token else None


def python_scripts(commands: list[Command]) -> list[tuple[Command, str, list[str]]]:
    """(command, script, arguments) of every `python SCRIPT.py ...`, `dctdiff SUB ...` and `python -m dctdiff SUB ...`;
    a subcommand is reported as its entry-point script (pipelines/SUB.py, tune/sweep.py)."""
    found = []
    for command in commands:
        tokens = command.tokens
        for i, token in enumerate(tokens[:-1]):
            if os.path.basename(token) in ("python", "python3") and tokens[i + 1].endswith(".py"):
                found.append((command, tokens[i + 1].removeprefix(IMAGE_ROOT), tokens[i + 2 :]))
            elif os.path.basename(token) == "dctdiff" and tokens[i + 1] in SUBCOMMANDS:
                sub = tokens[i + 1]
                found.append((command, "tune/sweep.py" if sub == "sweep" else f"pipelines/{sub}.py", tokens[i + 2 :]))
    return found


class _Parsed(BaseException):
    """Raised once a script's argparse accepted its arguments: stops main() before it does any work."""


def check_flags(script: str, args: list[str]) -> None:
    """Run the script's ``main(args)`` only up to its argparse: fails on an unknown flag or a bad value.

    An entry point in pipelines/ or tune/ stands for its subcommand's module in dctdiff.commands."""
    name = script.removesuffix(".py")
    if name.startswith(("pipelines/", "tune/")):
        module = importlib.import_module(SUBCOMMANDS[name.split("/")[1]][0])
    else:
        module = importlib.import_module(name.replace("/", "."))
    if not inspect.signature(module.main).parameters:  # a script without flags (e.g. benchmarks)
        assert args == [], f"{script} takes no arguments"
        return
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        original(self, argv, namespace)  # exits with status 2 on an unknown flag or a bad value
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_then_stop
    try:
        module.main(args)
    except _Parsed:
        return
    except SystemExit as exit_:
        pytest.fail(f"{script} rejects {shlex.join(args)} (exit {exit_.code})")
    finally:
        argparse.ArgumentParser.parse_args = original
    pytest.fail(f"{script}.main returned without parsing its arguments")


def test_commands_name_existing_paths():
    commands = all_commands()
    paths = {(c.source, p) for c in commands for t in c.tokens if (p := repo_path(t))}
    assert {p for _, p in paths} >= {"pipelines/train.py", "pipelines/prepare.py", "cluster/aws-gpu.yaml"}
    missing = [f"{source}: {path}" for source, path in sorted(paths) if not (REPO / path).exists()]
    assert missing == []


def test_python_commands_use_existing_scripts_and_accepted_flags(capsys):
    scripts = python_scripts(all_commands())
    assert {s for _, s, _ in scripts} >= {"pipelines/train.py", "pipelines/prepare.py", "pipelines/sample.py",
                                          "pipelines/evaluate.py", "tune/sweep.py"}  # fmt: skip
    for command, script, args in scripts:
        assert (REPO / script).is_file(), f"{command.source}: {script}"
        check_flags(script, args)
        if script == "pipelines/train.py":  # also the preset and --set keys
            importlib.import_module("dctdiff.commands.train_command").parse_args(args)


def test_flag_check_rejects_an_unknown_flag(capsys):
    with pytest.raises(pytest.fail.Exception, match="rejects --data s3://b/d --workerz 2"):
        check_flags("pipelines/train.py", ["--data", "s3://b/d", "--workerz", "2"])
    assert "unrecognized arguments: --workerz" in capsys.readouterr().err
