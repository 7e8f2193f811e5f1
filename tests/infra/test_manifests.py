"""infra/: the deployment files load, carry what their tools need, and agree with the
package (image tag = advorch.__version__, pins = pyproject.toml) and with the real CLIs
(advorch, ray start, dask, mlflow server) they run. No network, docker or kubectl."""

from __future__ import annotations

import configparser
import functools
import importlib.metadata
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import advorch

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S = INFRA / "kubernetes"
README = INFRA / "README.md"
IMAGE = "ghcr.io/advorch/advorch"
VERSION = advorch.__version__
NAMESPACE = "advorch"
# Subcommands being added to the CLI: infra/README.md may show them before they exist;
# manifests may use only what the CLI accepts today.
NEW_SUBCOMMANDS = {"submit", "jobs", "schedule"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN", re.I)
TOOLS = {("ray", "start"), ("dask", "scheduler"), ("dask", "worker"), ("mlflow", "server")}


# --- loading and walking ------------------------------------------------------------

def yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


@functools.cache
def docs(path: Path) -> tuple[Any, ...]:
    return tuple(yaml.safe_load_all(path.read_text(encoding="utf-8")))


def k8s_docs() -> list[dict]:
    return [d for p in sorted(K8S.glob("*.y*ml")) for d in docs(p)]


def of_kind(kind: str) -> list[dict]:
    return [d for d in k8s_docs() if d.get("kind") == kind]


def nodes(node: Any) -> Iterator[Any]:
    """Every dict, list and scalar inside `node`, depth first."""
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from nodes(child)


def pod_containers(node: Any) -> Iterator[tuple[dict, dict]]:
    """(pod spec, container) for every container of every pod template inside `node`."""
    for n in nodes(node):
        if isinstance(n, dict) and isinstance(n.get("containers"), list):
            for c in n["containers"] + n.get("initContainers", []):
                yield n, c


def gpus(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def compose() -> dict:
    (doc,) = docs(INFRA / "mlflow" / "docker-compose.yaml")
    return doc


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[\[=]", d)[0].lower(): d.split("==")[1] for d in deps if "==" in d}


# --- command lines ------------------------------------------------------------------

def shell_segments(text: str) -> Iterator[list[str]]:
    """Simple commands of a shell text: lines (with \\ continuations) split on ; && || |,
    without redirections (> FILE)."""
    for line in text.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lex.whitespace_split = True
        segment: list[str] = []
        tokens = iter(lex)
        for token in tokens:
            if set(token) <= set("<>&") and set(token) & set("<>"):
                next(tokens, None)
            elif set(token) <= set(";&|"):
                yield segment
                segment = []
            else:
                segment.append(token)
        yield segment


def is_tool(argv: list[str]) -> bool:
    return len(argv) >= 2 and (argv[0] == "advorch" or tuple(argv[:2]) in TOOLS)


def in_pod(argv: list[str]) -> list[str]:
    """`kubectl exec POD -- CMD ...` → CMD ...; any other command as it is."""
    return argv[argv.index("--") + 1:] if argv[:1] == ["kubectl"] and "--" in argv else argv


def command_lines(node: Any) -> list[list[str]]:
    """argv of every advorch / ray start / dask / mlflow server command in a parsed file:
    container and compose command lists, and shell strings (entrypoints, start commands)."""
    found = []
    for n in nodes(node):
        if isinstance(n, dict) and any(isinstance(n.get(k), list) for k in ("command", "args")):
            argv = [str(x) for k in ("entrypoint", "command", "args")
                    for x in (n.get(k) if isinstance(n.get(k), list) else [])]
            if is_tool(argv):
                found.append(argv)
        elif isinstance(n, str) and " " in n.strip():
            try:
                found += [s for s in shell_segments(n) if is_tool(s)]
            except ValueError:  # prose with an odd quote, not a command
                continue
    return found


def manifest_commands() -> list[list[str]]:
    return [argv for p in yaml_files() for d in docs(p) for argv in command_lines(d)]


def readme_commands() -> list[list[str]]:
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    return [in_pod(s) for b in blocks for s in shell_segments(b) if is_tool(in_pod(s))]


@functools.cache
def advorch_cli():
    import typer.main

    from advorch.cli import app

    return typer.main.get_command(app)


def advorch_context(argv: list[str]):
    """The click context `advorch ARGS` parses to; None when the subcommand is unknown."""
    cmd, args, path = advorch_cli(), argv[1:], ["advorch"]
    while hasattr(cmd, "commands") and args and args[0] in cmd.commands:
        path.append(args[0])
        cmd, args = cmd.commands[args[0]], args[1:]
    if hasattr(cmd, "commands"):
        return None
    try:
        return cmd.make_context(" ".join(path), list(args), resilient_parsing=False)
    except Exception as e:  # click's UsageError and friends
        pytest.fail(f"`{shlex.join(argv)}` does not parse: {getattr(e, 'format_message', e.__str__)()}")


def repo_config(value: Path) -> Path:
    """The repository file a CONFIG argument names (/app/configs/X is configs/X in the image)."""
    text = str(value)
    if text.startswith("/app/configs/"):
        return ROOT / "configs" / text.removeprefix("/app/configs/")
    return ROOT / text


def check_advorch(argv: list[str], cluster_paths: bool):
    """Parse with the real CLI; the config exists and its --set overrides validate."""
    from advorch.config import load_config

    ctx = advorch_context(argv)
    assert ctx is not None, f"`{shlex.join(argv)}`: no such advorch subcommand"
    params = ctx.params
    if params.get("config") is not None:
        config = repo_config(params["config"])
        assert config.is_file(), f"`{shlex.join(argv)}`: {config} is not in the repository"
        load_config(config, params.get("set_") or [])
    for key in ("data", "output"):
        if cluster_paths and params.get(key):
            assert params[key].startswith("/") or "://" in params[key], \
                f"`{shlex.join(argv)}`: --{key} {params[key]} is relative: nodes cannot share it"
    if params.get("dask_address"):
        assert re.fullmatch(r"tcp://[\w.-]+:8786", params["dask_address"]), argv
    return params


def other_tool(argv: list[str]) -> dict:
    """Parse `ray start` / `dask scheduler|worker` / `mlflow server` with their own click
    commands (unknown or malformed flags fail here) and return the parameters."""
    key = tuple(argv[:2])
    if key == ("ray", "start"):
        from ray.scripts.scripts import start as cmd
    elif key == ("dask", "scheduler"):
        from distributed.cli.dask_scheduler import main as cmd
    elif key == ("dask", "worker"):
        from distributed.cli.dask_worker import main as cmd
    else:
        from mlflow.cli import server as cmd
    try:
        return cmd.make_context(" ".join(key), argv[2:], resilient_parsing=False).params
    except Exception as e:
        pytest.fail(f"`{shlex.join(argv)}` does not parse: {getattr(e, 'format_message', e.__str__)()}")


# --- tests --------------------------------------------------------------------------

def test_every_manifest_loads_and_is_not_empty() -> None:
    """All YAML under infra/ loads with safe_load_all; each document is a mapping."""
    names = {str(p.relative_to(INFRA)) for p in yaml_files()}
    assert {"ray/aws.yaml", "ray/gcp.yaml", "kubernetes/raycluster.yaml", "kubernetes/rayjob-train.yaml",
            "kubernetes/rayjob-tune.yaml", "kubernetes/dask.yaml", "kubernetes/mlflow.yaml",
            "kubernetes/namespace.yaml", "kubernetes/storage.yaml", "mlflow/docker-compose.yaml"} <= names
    for path in yaml_files():
        loaded = docs(path)
        assert loaded and all(isinstance(d, dict) and d for d in loaded), f"{path}: empty document"


def check_ray_cluster_spec(spec: dict, where: str) -> list[dict]:
    """KubeRay fields a cluster needs; returns the GPU worker groups."""
    head = spec["headGroupSpec"]
    params = head["rayStartParams"]
    assert params.get("dashboard-host") == "0.0.0.0" and params.get("num-cpus") == "0", where
    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: no workerGroupSpecs"
    for group in [head, *groups]:
        # KubeRay passes rayStartParams as `ray start --KEY=VALUE`: strings, real flags
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), where
        argv = ["ray", "start", "--head" if group is head else "--address=head:6379",
                *(f"--{k}={v}" for k, v in group["rayStartParams"].items())]
        other_tool(argv)
        containers = [c for _, c in pod_containers(group["template"])]
        assert containers and all(c.get("image") for c in containers), where
    for g in groups:
        assert all(isinstance(g[k], int) for k in ("replicas", "minReplicas", "maxReplicas")), g["groupName"]
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
    gpu_groups = [g for g in groups if any(gpus(c) for _, c in pod_containers(g["template"]))]
    assert gpu_groups, f"{where}: no worker group with nvidia.com/gpu in its limits"
    return gpu_groups


def test_raycluster_has_head_cpu_and_gpu_groups() -> None:
    """RayCluster: ray.io/v1, head without CPUs, a CPU and a GPU worker group."""
    clusters = of_kind("RayCluster")
    assert clusters
    for rc in clusters:
        assert rc["apiVersion"] == "ray.io/v1"
        gpu_groups = check_ray_cluster_spec(rc["spec"], rc["metadata"]["name"])
        assert len(rc["spec"]["workerGroupSpecs"]) > len(gpu_groups), "no CPU worker group"


def test_rayjobs_run_advorch_on_enough_gpus() -> None:
    """RayJob: an advorch entrypoint, cluster shut down after, GPUs for its workers."""
    from advorch.config import load_config

    jobs = of_kind("RayJob")
    assert {j["spec"]["entrypoint"].split()[1] for j in jobs} >= {"train", "tune"}
    for job in jobs:
        spec, name = job["spec"], job["metadata"].get("name") or job["metadata"]["generateName"]
        assert job["apiVersion"] == "ray.io/v1"
        assert spec["shutdownAfterJobFinishes"] is True, name
        assert isinstance(spec["ttlSecondsAfterFinished"], int), name
        gpu_groups = check_ray_cluster_spec(spec["rayClusterSpec"], name)
        (argv,) = command_lines(spec["entrypoint"])
        params = check_advorch(argv, cluster_paths=True)
        cfg = load_config(repo_config(params["config"]), params.get("set_") or [])
        workers = params.get("workers") or cfg.train.workers
        wanted = workers * (params.get("max_concurrent") or 1)
        have = sum(g["maxReplicas"] * max(gpus(c) for _, c in pod_containers(g["template"]))
                   for g in gpu_groups)
        assert params.get("gpus") or cfg.train.gpus, f"{name}: GPU workers but no --gpus / train.gpus"
        assert 0 < wanted <= have, f"{name}: needs {wanted} GPUs, its cluster has {have}"


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cluster_launcher_config(name: str) -> None:
    """`ray up` YAML: Ray's own schema, a head, a GPU type on the -gpu image, ray start."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    (raw,) = docs(INFRA / "ray" / name)
    validate_config(prepare_config(raw))
    assert raw["cluster_name"] and raw["provider"]["type"] == name.removesuffix(".yaml")
    if raw["provider"]["type"] == "gcp":
        assert raw["provider"]["project_id"] and raw["provider"]["availability_zone"]
    types = raw["available_node_types"]
    assert raw["head_node_type"] in types
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["docker"]["worker_image"].endswith("-gpu") for t in gpu_types)
    head = [other_tool(s) for c in raw["head_start_ray_commands"] for s in shell_segments(c) if is_tool(s)]
    workers = [other_tool(s) for c in raw["worker_start_ray_commands"] for s in shell_segments(c)
               if is_tool(s)]
    assert [p["head"] for p in head] == [True] and head[0]["port"] == 6379
    assert head[0]["dashboard_host"] == "0.0.0.0" and "ray_bootstrap_config" in head[0]["autoscaling_config"]
    assert [p["address"] for p in workers] == ["$RAY_HEAD_IP:6379"]


def test_compose_mlflow_server_with_postgres_s3_and_basic_auth() -> None:
    """docker-compose: postgres, MinIO with a bucket job, mlflow server with basic auth."""
    services = compose()["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    buckets = re.findall(r"mc mb [^&;]*local/([\w.-]+)", yaml.safe_dump(services))
    assert buckets, "no service creates the artifact bucket"
    (argv,) = command_lines(services["mlflow"])
    params = other_tool(argv)
    assert params["app_name"] == "basic-auth" and params["host"] == "0.0.0.0" and params["port"] == 5000
    assert params["backend_store_uri"].startswith("postgresql+psycopg2://")
    assert params["artifacts_destination"].rstrip("/") == f"s3://{buckets[0]}"
    for name, service in services.items():
        assert "healthcheck" in service or service.get("restart") == "no", f"{name}: no healthcheck"
    mlflow_deps = services["mlflow"]["depends_on"]
    assert mlflow_deps["postgres"]["condition"] == "service_healthy"
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])
             if not v.startswith((".", "/"))}
    assert named <= set(compose()["volumes"])


def test_no_literal_secrets() -> None:
    """Passwords are ${VAR} substitutions (compose) or secretKeyRefs (Kubernetes), never values."""
    substitution = re.compile(r"\$\{\w+(:?[?-][^}]*)?\}|\$\(\w+\)")
    for service in compose()["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert substitution.fullmatch(str(value)), f"compose {key}: literal value"
    for path in yaml_files():
        for n in nodes(list(docs(path))):
            if isinstance(n, str):
                for password in re.findall(r"://[^\s/:@]+:(\$\{[^}]*\}|[^\s@/]+)@", n):
                    assert substitution.fullmatch(password), f"{path}: password in URI {n!r}"
    for _, c in pod_containers(k8s_docs()):
        for env in c.get("env", []):
            if SECRET_NAME.search(env["name"]):
                assert "secretKeyRef" in env.get("valueFrom", {}), f"{c['name']}: {env['name']} literal"
    assert not of_kind("Secret"), "Secrets are created with kubectl, not committed"
    example = dict(line.split("=", 1) for line in (INFRA / "mlflow" / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    used = set(re.findall(r"\$\{(\w+)", yaml.safe_dump(compose())))
    assert used and used <= set(example), f"not in .env.example: {used - set(example)}"
    assert all(not v for k, v in example.items() if SECRET_NAME.search(k)), "a secret in .env.example"


def test_basic_auth_ini_and_its_mounts() -> None:
    """basic_auth.ini: no admin password; compose and k8s mount it where MLflow reads it and
    keep its user store on a volume."""
    ini = configparser.ConfigParser()
    ini.read(INFRA / "mlflow" / "basic_auth.ini")
    auth = ini["mlflow"]
    assert auth["default_permission"] in {"READ", "EDIT", "MANAGE", "NO_PERMISSIONS"}
    assert not auth.get("admin_password")
    db_dir = str(Path(auth["database_uri"].removeprefix("sqlite:///")).parent)
    mlflow_svc = compose()["services"]["mlflow"]
    config_path = mlflow_svc["environment"]["MLFLOW_AUTH_CONFIG_PATH"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in mlflow_svc["volumes"]}
    assert mounts[config_path] == "./basic_auth.ini" and db_dir in mounts
    (deployment,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "mlflow"]
    ((_, container),) = pod_containers(deployment)
    env = {e["name"]: e.get("value") for e in container["env"]}
    k8s_mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(env["MLFLOW_AUTH_CONFIG_PATH"]).parent) in k8s_mounts and db_dir in k8s_mounts
    params = other_tool(container["command"] + container["args"])
    assert params["app_name"] == "basic-auth" and params["backend_store_uri"].startswith("postgresql+psycopg2://")
    assert params["artifacts_destination"].startswith("s3://") and params["host"] == "0.0.0.0"


def services() -> dict[tuple[str, str], dict]:
    return {(s["metadata"]["name"], s["metadata"]["namespace"]): s for s in of_kind("Service")}


def service_port(host: str, port: int) -> bool:
    """Is host:port a Service defined in infra/kubernetes (name, or name.namespace.svc)?"""
    name, _, rest = host.partition(".")
    namespace = rest.split(".")[0] if rest else NAMESPACE
    svc = services().get((name, namespace))
    return svc is not None and port in {p["port"] for p in svc["spec"]["ports"]}


def test_dask_workers_connect_to_the_scheduler_service() -> None:
    """Dask: `dask scheduler` on 8786 behind a Service; workers connect to that Service."""
    lines = [argv for d in k8s_docs() for argv in command_lines(d) if argv[0] == "dask"]
    scheduler = [other_tool(a) for a in lines if a[1] == "scheduler"]
    workers = [other_tool(a) for a in lines if a[1] == "worker"]
    assert scheduler and workers
    assert str(scheduler[0]["port"]) == "8786" and scheduler[0]["dashboard_address"].endswith(":8787")
    for w in workers:
        m = re.fullmatch(r"tcp://([\w.-]+):(\d+)", w["scheduler"])
        assert m and m[2] == "8786" and service_port(m[1], 8786), w["scheduler"]


def test_kubernetes_objects_reference_what_exists() -> None:
    """One namespace; PVCs, Services, Secrets and ConfigMaps that pods use are defined
    (or created in infra/README.md); Service selectors match pods."""
    assert [d["metadata"]["name"] for d in of_kind("Namespace")] == [NAMESPACE]
    for d in k8s_docs():
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, f"{d['kind']} outside {NAMESPACE}"
    pvcs = {d["metadata"]["name"] for d in of_kind("PersistentVolumeClaim")}
    (data,) = [d for d in of_kind("PersistentVolumeClaim") if d["metadata"]["name"] == "advorch-data"]
    assert data["spec"]["accessModes"] == ["ReadWriteMany"]
    claims = {n["claimName"] for n in nodes(k8s_docs()) if isinstance(n, dict) and "claimName" in n}
    assert "advorch-data" in claims and claims <= pvcs
    readme = README.read_text(encoding="utf-8")
    created = set(re.findall(r"create (?:secret generic|configmap) ([\w-]+)", readme))
    refs = {n[key]["name"] for n in nodes(k8s_docs()) if isinstance(n, dict)
            for key in ("secretKeyRef", "secretRef", "configMap") if isinstance(n.get(key), dict)}
    assert refs and refs <= created, f"not created in infra/README.md: {refs - created}"
    pods = [d for d in k8s_docs() if d["kind"] in ("Deployment", "StatefulSet")]
    labels = [d["spec"]["template"]["metadata"]["labels"].items() for d in pods]
    for d, pod_labels in zip(pods, labels, strict=True):
        assert d["spec"]["selector"]["matchLabels"].items() <= pod_labels, d["metadata"]["name"]
    for (name, _), svc in services().items():
        assert any(svc["spec"]["selector"].items() <= ls for ls in labels), f"Service {name} selects no pod"
    uris = {e["value"] for _, c in pod_containers(k8s_docs()) for e in c.get("env", [])
            if e["name"] == "MLFLOW_TRACKING_URI"}
    assert uris
    for uri in uris:
        m = re.fullmatch(r"http://([\w.-]+):(\d+)", uri)
        assert m and service_port(m[1], int(m[2])), f"MLFLOW_TRACKING_URI {uri}: no such Service"


def image_refs() -> list[tuple[str, bool | None]]:
    """(image, runs on a GPU?) for every advorch image named in infra/ (None: unknown)."""
    refs: list[tuple[str, bool | None]] = []
    for path in yaml_files():
        for d in docs(path):
            placed = set()
            for _, c in pod_containers(d):
                refs.append((c["image"], gpus(c) > 0))
                placed.add(id(c))
            launcher = d.get("docker", {}) if "available_node_types" in d else {}
            if launcher:
                refs.append((launcher["image"], False))
                for t in d["available_node_types"].values():
                    if "docker" in t:
                        refs.append((t["docker"]["worker_image"], t["resources"].get("GPU", 0) > 0))
            for n in nodes(d):
                if isinstance(n, dict) and isinstance(n.get("image"), str) and id(n) not in placed \
                        and n is not launcher:
                    refs.append((n["image"], None))
    text = "\n".join(p.read_text() for p in [*INFRA.glob("Dockerfile*"), README])
    refs += [(m, None) for m in re.findall(rf"{re.escape(IMAGE)}:[\w.-]+", text)]
    return [(image, gpu) for image, gpu in refs if image.startswith(IMAGE + ":")]


def test_images_are_tagged_with_the_package_version() -> None:
    """Every advorch image is :VERSION or :VERSION-gpu; GPU containers use -gpu, others not."""
    refs = image_refs()
    tags = {image.split(":")[1] for image, _ in refs}
    assert tags == {VERSION, f"{VERSION}-gpu"}, f"tags {tags}, package version {VERSION}"
    for image, on_gpu in refs:
        if on_gpu is not None:
            assert image.endswith("-gpu") == on_gpu, f"{image} on {'a GPU' if on_gpu else 'CPUs'}"


def dockerfile(name: str) -> str:
    return (INFRA / name).read_text(encoding="utf-8")


def test_dockerfiles_install_the_repository_at_pyproject_pins() -> None:
    """Both images `pip install .`; bases, torch and every other pin agree with pyproject."""
    pins = pyproject_pins()
    python = re.search(r">=(\d+\.\d+)", tomllib.loads((ROOT / "pyproject.toml").read_text())
                       ["project"]["requires-python"])[1]
    cpu, gpu = dockerfile("Dockerfile"), dockerfile("Dockerfile.gpu")
    assert re.search(rf"^FROM python:{python}-slim$", cpu, re.M)
    assert re.search(rf"^FROM rayproject/ray:{re.escape(pins['ray'])}-py{python.replace('.', '')}-gpu$",
                     gpu, re.M)
    assert re.search(r"--index-url https://download\.pytorch\.org/whl/cpu torch==" + re.escape(pins["torch"]),
                     cpu)
    extras = (INFRA / "image-requirements.txt").read_text()
    for text in (cpu, gpu):
        assert re.search(r"^RUN pip install \. -r /tmp/image-requirements\.txt$", text, re.M)
        assert re.search(r"^ENV .*RAY_USAGE_STATS_ENABLED=0", text, re.M | re.S)
        assert re.search(r"^WORKDIR /app$", text, re.M)
        assert re.search(r"^COPY (--chown=\S+ )?configs \./configs$", text, re.M)
    for name, version in re.findall(r"([A-Za-z][\w-]*)(?:\[[\w,]+\])?==([\w.+-]+)", cpu + gpu + extras):
        if name.lower() in pins:
            assert version == pins[name.lower()], f"{name}=={version}, pyproject pins {pins[name.lower()]}"
    lines = [ln.split("#")[0].strip() for ln in extras.splitlines() if ln.split("#")[0].strip()]
    assert lines and all("==" in ln for ln in lines)
    s3fs = next(ln for ln in lines if ln.startswith("s3fs"))
    # s3fs X requires fsspec X: it must be the fsspec that pyproject's pins resolve to
    assert s3fs.split("==")[1] == importlib.metadata.version("fsspec")


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_copies_exist_and_pass_its_dockerignore(name: str) -> None:
    """Every COPY source exists in the repository and is let through by NAME.dockerignore."""
    allowed = {ln[1:] for ln in (INFRA / f"{name}.dockerignore").read_text().splitlines()
               if ln.startswith("!")}
    copies = re.findall(r"^COPY (?:--chown=\S+ )?(.+) \S+$", dockerfile(name), re.M)
    sources = [s for line in copies for s in line.split()]
    assert "pyproject.toml" in sources and "configs" in sources
    for src in sources:
        assert (ROOT / src).exists(), f"{name}: COPY {src}: not in the repository"
        assert src in allowed, f"{name}: COPY {src} is excluded by {name}.dockerignore"


def test_manifest_commands_parse_with_the_real_clis() -> None:
    """Every advorch / ray start / dask / mlflow server line in infra/ parses with its CLI."""
    lines = manifest_commands()
    kinds = {" ".join(a[:2]) for a in lines}
    assert {"advorch train", "advorch tune", "ray start", "dask scheduler", "dask worker",
            "mlflow server"} <= kinds
    for argv in lines:
        if argv[0] == "advorch":
            check_advorch(argv, cluster_paths=True)
        else:
            other_tool(argv)


def test_readme_commands_and_files() -> None:
    """infra/README.md: its advorch commands parse (new subcommands once they exist), the
    files it names exist, and it says where CronJobs come from."""
    lines = [a for a in readme_commands() if a[0] == "advorch"]
    assert {a[1] for a in lines} >= {"submit", "jobs", "train", "preprocess", "schedule"}
    for argv in lines:
        if argv[1] in NEW_SUBCOMMANDS and advorch_context(argv) is None:
            continue  # not in the CLI yet
        check_advorch(argv, cluster_paths=False)
    text = README.read_text(encoding="utf-8")
    for ref in set(re.findall(r"infra/[\w./-]+\.(?:ya?ml|ini|example|md)\b", text)):
        if not re.search(r"cronjob-|/\.env$", ref):
            assert (ROOT / ref).is_file(), f"infra/README.md names {ref}, which does not exist"
    assert re.search(r"advorch schedule \S+ --every \"[^\"]+\" --format kubernetes > "
                     r"infra/kubernetes/cronjob-[\w-]+\.yaml", text)
    for needed in ("ray up infra/ray/aws.yaml", "docker compose --env-file", "MLFLOW_TRACKING_USERNAME",
                   "MLFLOW_TRACKING_PASSWORD", "kubectl apply -f infra/kubernetes/raycluster.yaml"):
        assert needed in text, f"infra/README.md does not show {needed!r}"
