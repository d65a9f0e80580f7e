"""The team stack (infra/) and sharded evaluation (sdd/evaluation/shards.py, flows/shards.py).

No Docker engine or cluster is needed:

* the compose files are interpolated the way Compose does (``${VAR:-default}``, ``${VAR:?error}``,
  ``$$``) with the values of ``.env.example`` and validated against the Compose specification's
  JSON schema (vendored in ``tests/data``), then checked for what the stack promises: healthchecks,
  localhost-only ports, named volumes, a GPU reservation, no secret in any file; where a Compose CLI
  is installed, ``docker compose config -q`` must accept them too;
* the Kubernetes base job template goes through Prefect's own validation (the server's work-pool
  check, and prefect-kubernetes rendering a real Job manifest for a flow run);
* the runner Dockerfile is parsed for its layer order;
* sharded evaluation runs on a real local Dask cluster with 2 worker processes, under a temporary
  Prefect server, and must give exactly the metrics, report and judgements of a single-process run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import toy_prompt_set

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
COMPOSE_DIR = INFRA / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
AUTH_FILE = COMPOSE_DIR / "docker-compose.auth.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
COMPOSE_SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
K8S_TEMPLATE = INFRA / "k8s" / "gpu-base-job-template.json"
DOCKERFILE = INFRA / "docker" / "Dockerfile"

SECRET_VARS = ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MLFLOW_S3_SECRET_KEY", "PREFECT_SERVER_API_AUTH_STRING",
               "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "SDD_GUARD_SECRET",
               "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY")
TEST_SECRET = "test-only-not-a-secret"


# --- Compose: interpolation as the Compose specification defines it -------------------------------

_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
                  r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


class MissingVariable(ValueError):
    pass


def interpolate(value, env: dict[str, str]):
    """Compose variable substitution on every string of a parsed YAML document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        name = m["name"] or m["bare"]
        op, arg, current = m["op"], m["arg"], env.get(name)
        unset_or_empty = current is None or current == ""
        if op == ":-":
            return arg if unset_or_empty else current
        if op == "-":
            return arg if current is None else current
        if op == ":?" and unset_or_empty or op == "?" and current is None:
            raise MissingVariable(f"{name}: {arg}")
        return current or ""

    return _VAR.sub(substitute, value)


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value
    return env


def example_env(**overrides: str) -> dict[str, str]:
    """.env.example with its empty secrets filled in, as a user following the instructions would."""
    env = read_env_file(ENV_EXAMPLE)
    env.update({k: TEST_SECRET for k in SECRET_VARS})
    env["PREFECT_SERVER_API_AUTH_STRING"] = f"admin:{TEST_SECRET}"
    env.update(overrides)
    return env


def load_compose(*files: Path) -> dict:
    """The files merged the way ``docker compose -f a -f b`` merges them (maps by key, lists replaced)."""
    def merge(base, override):
        if isinstance(base, dict) and isinstance(override, dict):
            out = dict(base)
            for k, v in override.items():
                out[k] = merge(base[k], v) if k in base else v
            return out
        return override

    merged: dict = {}
    for f in files:
        merged = merge(merged, yaml.safe_load(f.read_text()))
    return merged


def compose_validator():
    import jsonschema

    schema = json.loads(COMPOSE_SCHEMA.read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


@pytest.fixture(scope="module")
def stack() -> dict:
    return interpolate(load_compose(COMPOSE_FILE), example_env())


@pytest.mark.parametrize("files", [(COMPOSE_FILE,), (COMPOSE_FILE, AUTH_FILE)], ids=["base", "with-auth"])
def test_compose_files_follow_the_compose_spec(files):
    validator = compose_validator()
    raw = load_compose(*files)
    resolved = interpolate(raw, example_env())
    for doc in (raw, resolved):
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])
    # Extension fields (x-...) exist only to be merged into services.
    assert all(k in {"services", "volumes"} or k.startswith("x-") for k in raw)


def test_compose_refuses_to_start_without_each_secret():
    raw = load_compose(COMPOSE_FILE, AUTH_FILE)
    for secret in SECRET_VARS:
        with pytest.raises(MissingVariable, match=secret):
            interpolate(raw, example_env(**{secret: ""}))


def test_no_secret_is_committed():
    env = read_env_file(ENV_EXAMPLE)
    for secret in SECRET_VARS:
        assert env.get(secret) == "", f".env.example must leave {secret} empty"
    # Every password-like setting in the compose files comes from a variable that fails when unset.
    secret_words = re.compile(r"(PASSWORD|SECRET|AUTH_STRING)")
    for f in (COMPOSE_FILE, AUTH_FILE):
        for service, spec in load_compose(f)["services"].items():
            for key, value in service_env(spec).items():
                if secret_words.search(key):
                    assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", value), f"{f.name}: {service}.{key} = {value!r}"
    # ... and connection URLs embed the password only through the same variable.
    text = COMPOSE_FILE.read_text()
    for url in re.findall(r"postgres(?:ql)?(?:\+asyncpg)?://\S+", text):
        assert "${POSTGRES_PASSWORD:?" in url, url
    for f in (INFRA / "k8s" / "gpu-base-job-template.json", INFRA / "compose" / "mlflow-auth.ini"):
        assert not re.search(r"(?i)(password|secret)\s*[=:]\s*['\"]?[A-Za-z0-9+/]{8,}", f.read_text()), f


def test_every_service_has_a_healthcheck_or_is_a_one_shot(stack):
    for name, service in stack["services"].items():
        if service.get("restart") == "no":  # one-shot set-up jobs: others wait for them to complete
            assert name.endswith("-init")
            continue
        check = service.get("healthcheck")
        assert check and check["test"], f"{name} has no healthcheck"
    dependents = {name: s.get("depends_on", {}) for name, s in stack["services"].items()}
    for name, deps in dependents.items():
        for dep, cond in deps.items():
            expected = ("service_completed_successfully" if stack["services"][dep].get("restart") == "no"
                        else "service_healthy")
            assert cond["condition"] == expected, f"{name} -> {dep}"


def test_published_ports_bind_to_localhost_by_default(stack):
    published = [(name, port) for name, s in stack["services"].items() for port in s.get("ports", [])]
    assert {name for name, _ in published} == {"prefect-server", "mlflow", "minio"}
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"
    assert "ports" not in stack["services"]["postgres"]


def test_state_lives_in_named_volumes(stack):
    volumes = set(stack["volumes"])
    assert {"postgres-data", "minio-data", "runs", "hf-cache"} <= volumes
    for name, service in stack["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source in volumes or source.startswith("./"), f"{name} mounts {source}"
            if source.startswith("./"):
                assert (COMPOSE_DIR / source).is_file() and mount.endswith(":ro"), mount
    for worker in ("cpu-worker", "gpu-worker"):  # the pools hand run folders to each other
        assert "runs:/opt/sdd/runs" in stack["services"][worker]["volumes"]


def test_the_servers_use_postgres_and_mlflow_proxies_artifacts_to_minio(stack):
    s = stack["services"]
    prefect_db = service_env(s["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_db == f"postgresql+asyncpg://sdd:{TEST_SECRET}@postgres:5432/prefect"
    mlflow_env = service_env(s["mlflow"])
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"] == f"postgresql://sdd:{TEST_SECRET}@postgres:5432/mlflow"
    assert mlflow_env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow_env["AWS_ACCESS_KEY_ID"] == "mlflow" and mlflow_env["AWS_SECRET_ACCESS_KEY"] == TEST_SECRET
    command = s["mlflow"]["command"]
    assert command[command.index("--artifacts-destination") + 1] == "s3://mlflow/artifacts"
    assert "--no-serve-artifacts" not in command  # proxied: clients need no bucket credentials
    assert "CREATE DATABASE mlflow" in (COMPOSE_DIR / "postgres-init.sql").read_text()
    init = (COMPOSE_DIR / "minio-init.sh").read_text()
    assert 'mc mb --ignore-existing "local/$MLFLOW_BUCKET"' in init
    for script in ("minio-init.sh", "prefect-init.sh"):
        subprocess.run(["bash", "-n", str(COMPOSE_DIR / script)], check=True)


def test_the_promotion_guard_runs_and_its_webhook_is_registered_at_init(stack):
    s = stack["services"]
    guard, init = s["guard"], s["prefect-init"]
    assert guard["image"] == "sdd-runner:local" and "ports" not in guard  # only MLflow posts to it
    assert guard["command"][:4] == ["python", "-m", "sdd.registry.receiver", "serve"]
    assert service_env(guard)["SDD_GUARD_SECRET"] == service_env(init)["SDD_GUARD_SECRET"] == TEST_SECRET
    assert init["depends_on"]["guard"]["condition"] == "service_healthy"
    assert "sdd.registry.receiver register-webhook --url \"${SDD_GUARD_URL" in \
        (COMPOSE_DIR / "prefect-init.sh").read_text()
    mlflow_env = service_env(s["mlflow"])
    assert mlflow_env["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] == "true" and "http" in mlflow_env[
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES"].split(",")
    assert mlflow_env["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"] == TEST_SECRET


def test_workers_serve_the_cpu_and_gpu_pools_from_one_image(stack):
    s = stack["services"]
    images = {s[name]["image"] for name in ("cpu-worker", "gpu-worker", "prefect-init")}
    assert images == {"sdd-runner:local"}
    for pool in ("cpu", "gpu"):
        worker = s[f"{pool}-worker"]
        command = worker["command"]
        assert command[:3] == ["prefect", "worker", "start"] and command[command.index("--pool") + 1] == pool
        env = service_env(worker)
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert worker["build"] == {"context": "../..", "dockerfile": "infra/docker/Dockerfile"}
    assert (COMPOSE_DIR / "../..").resolve() == ROOT


def test_the_gpu_worker_reserves_nvidia_gpus(stack):
    gpu = stack["services"]["gpu-worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "1", "capabilities": ["gpu"]}]
    assert gpu["runtime"] == "nvidia" and gpu["profiles"] == ["gpu"]
    assert "deploy" not in stack["services"]["cpu-worker"]
    assert service_env(stack["services"]["cpu-worker"])["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_the_auth_override_turns_on_prefect_and_mlflow_auth():
    s = interpolate(load_compose(COMPOSE_FILE, AUTH_FILE), example_env())["services"]
    assert service_env(s["prefect-server"])["PREFECT_SERVER_API_AUTH_STRING"] == f"admin:{TEST_SECRET}"
    assert s["mlflow"]["command"][2:4] == ["--app-name", "basic-auth"]
    assert service_env(s["mlflow"])["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"
    for worker in ("cpu-worker", "gpu-worker", "prefect-init", "guard"):
        env = service_env(s[worker])
        assert env["PREFECT_API_AUTH_STRING"] == f"admin:{TEST_SECRET}"
        assert env["MLFLOW_TRACKING_PASSWORD"] == TEST_SECRET
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"  # the base environment is kept
    # The mounted auth settings have what MLflow's read_auth_config requires (mlflow.server.auth.config),
    # and no admin password: that comes from MLFLOW_AUTH_ADMIN_PASSWORD.
    import configparser

    ini = configparser.ConfigParser()
    ini.read(COMPOSE_DIR / "mlflow-auth.ini")
    assert ini["mlflow"]["default_permission"] in {"READ", "EDIT", "MANAGE", "NO_PERMISSIONS"}
    assert ini["mlflow"]["database_uri"] == "sqlite:////var/lib/mlflow-auth/basic_auth.db"
    assert "admin_password" not in ini["mlflow"]


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.skipif(_compose_cli() is None, reason="no Compose CLI here (the schema tests above still ran)")
def test_the_compose_cli_accepts_the_files(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in example_env().items()))
    for files in ((COMPOSE_FILE,), (COMPOSE_FILE, AUTH_FILE)):
        args = [a for f in files for a in ("-f", str(f))]
        out = subprocess.run([*_compose_cli(), "--env-file", str(env_file), *args, "config", "-q"],
                             capture_output=True, text=True, cwd=COMPOSE_DIR)
        assert out.returncode == 0, out.stderr


# --- the runner image -----------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        instruction, _, args = current.strip().partition(" ")
        lines.append((instruction.upper(), args.strip()))
        current = ""
    return lines


def test_runner_image_installs_torch_first_then_the_lock_then_the_project():
    steps = dockerfile_instructions(DOCKERFILE)
    args = dict((a.split("=")[0], a.split("=", 1)[1].strip('"')) for i, a in steps if i == "ARG" and "=" in a)
    assert args["CUDA_BASE"].startswith("nvidia/cuda:") and "runtime" in args["CUDA_BASE"]
    assert args["PYTHON_VERSION"] == "3.11"
    lock = (ROOT / "requirements.lock").read_text()
    assert not re.search(r"(?m)^torch==", lock), "torch is installed on its own, not from the lock"
    assert args["TORCH_SPEC"] == "torch==2.13.0"
    assert ("FROM", "${CUDA_BASE}") in steps

    def first(pred) -> int:
        return next(i for i, step in enumerate(steps) if pred(*step))

    torch_step = first(lambda i, a: i == "RUN" and "TORCH_SPEC" in a)
    copy_lock = first(lambda i, a: i == "COPY" and a == "requirements.lock ./")
    lock_step = first(lambda i, a: i == "RUN" and "-r requirements.lock" in a)
    copy_all = first(lambda i, a: i == "COPY" and a == ". .")
    project = first(lambda i, a: i == "RUN" and "-e ." in a)
    assert torch_step < copy_lock < lock_step < copy_all < project
    assert steps[-2][0] == "USER" and steps[-2][1] != "root"
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "runs", ".sdd", "**/.env"} <= set(ignore)
    if shutil.which("hadolint"):
        out = subprocess.run(["hadolint", "--failure-threshold", "warning", str(DOCKERFILE),
                              str(INFRA / "docker" / "mlflow.Dockerfile")], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


# --- the Kubernetes work-pool template --------------------------------------------------------------


def k8s_template() -> dict:
    return json.loads(K8S_TEMPLATE.read_text())


def test_k8s_template_passes_the_prefect_servers_work_pool_validation():
    import jsonschema
    from prefect.server.schemas.actions import WorkPoolCreate

    template = k8s_template()
    pool = WorkPoolCreate(name="gpu-k8s", type="kubernetes", base_job_template=template)
    assert pool.base_job_template == template
    jsonschema.Draft202012Validator.check_schema(template["variables"])
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    jsonschema.validate(defaults, template["variables"])  # every default fits its own schema


def test_k8s_template_keeps_the_shape_of_prefect_kubernetes_default():
    KubernetesWorker = pytest.importorskip("prefect_kubernetes.worker").KubernetesWorker
    default = KubernetesWorker.get_default_base_job_template()
    template = k8s_template()
    assert set(default["job_configuration"]) <= set(template["job_configuration"])
    def shape(schema: dict) -> dict:  # what a value must look like; defaults and prose may differ
        return {k: v for k, v in schema.items() if k not in ("default", "description", "examples")}

    for name, schema in default["variables"]["properties"].items():  # every worker variable still exists
        assert name in template["variables"]["properties"], name
        assert shape(template["variables"]["properties"][name]) == shape(schema), name


def test_k8s_template_renders_a_gpu_job_for_a_flow_run():
    """prefect-kubernetes turns the template into the Job it would create for a flow run."""
    import asyncio
    import uuid

    worker = pytest.importorskip("prefect_kubernetes.worker")
    from prefect.client.schemas.objects import FlowRun

    class NoClient:  # nothing in the template refers to blocks or Prefect variables
        def __getattr__(self, name):
            raise AssertionError(f"the template needed the Prefect API ({name})")

    config = asyncio.run(worker.KubernetesWorkerJobConfiguration.from_template_and_values(
        k8s_template(), {"image": "registry.example/sdd-runner:1", "gpu_count": 2, "env": {"EXTRA": "1"}},
        client=NoClient()))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="quiet-fox", flow_id=uuid.uuid4()))
    job = config.job_manifest
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert job["kind"] == "Job" and container["image"] == "registry.example/sdd-runner:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert container["args"] == ["prefect", "flow-run", "execute"]
    env = {e["name"]: e for e in container["env"]}
    assert env["EXTRA"]["value"] == "1" and env["SDD_PROJECT_DIR"]["value"] == "/opt/sdd"
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert {"nvidia.com/gpu.present": "true"} == pod["nodeSelector"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["runs"]["persistentVolumeClaim"]["claimName"] == "sdd-runs"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/opt/sdd/runs", "/dev/shm"}
    assert "{{" not in json.dumps(job)  # every placeholder resolved
    pvc = yaml.safe_load((INFRA / "k8s" / "runs-pvc.yaml").read_text())
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] == "sdd-runs"
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


def test_k8s_readme_commands_use_the_files_that_exist():
    readme = (INFRA / "k8s" / "README.md").read_text()
    assert "prefect work-pool create" in readme and "--base-job-template infra/k8s/gpu-base-job-template.json" in readme
    for path in re.findall(r"infra/[\w./-]+\.(?:json|yaml|yml)", readme):
        assert (ROOT / path).is_file(), path


# --- sharded evaluation -----------------------------------------------------------------------------


def test_split_is_deterministic_balanced_and_keeps_identical_rows_together():
    from sdd.errors import ShardError
    from sdd.evaluation import split
    from sdd.prompts import PromptRow, PromptSet

    ps = toy_prompt_set(16)
    shards = split(ps, 3)
    assert shards == split(ps, 3)  # same set, same n: same shards
    assert sorted(i for s in shards for i in s.rows) == list(range(16))
    assert sorted(len(s.rows) for s in shards) == [5, 5, 6]
    assert all(s.prompt_set_sha256 == ps.sha256 and s.count == 3 for s in shards)
    assert [s.index for s in shards] == [0, 1, 2]

    twin = PromptRow(prompt="a red box", seed=7, concepts=("red",))
    dup = PromptSet("dup", "eval", (twin, PromptRow(prompt="a blue box", seed=1), twin))
    shards = split(dup, 2)
    assert [s.rows for s in shards] == [(0, 2), (1,)]  # the same image is drawn once, in one shard
    assert [len(s.rows) for s in split(dup, 5)] == [2, 1, 0, 0, 0]
    with pytest.raises(ShardError, match="0 shards"):
        split(dup, 0)


def _fake_result(ps, shard, models=None):
    """A shard result as run_shard makes it, without generating anything."""
    from sdd.evaluation import SHARD_FORMAT

    judgements = {}
    for concept in ps.concepts():
        rows = [i for i in shard.rows if concept in ps.rows[i].concepts]
        judgements[concept] = {"rows": rows, **{r: {"present": [i % 2 == 0 for i in rows], "score": [0.5] * len(rows)}
                                                for r in ("base", "erased")}}
    return {"format": SHARD_FORMAT, **shard.to_dict(),
            "images": {r: [f"/img/{r}/{i}.png" for i in shard.rows] for r in ("base", "erased")},
            "judgements": judgements,
            "models": models or {"base": {"unet_sha256": "a"}, "erased": {"unet_sha256": "b"}},
            "host": "h", "timing": {"generate_s": 1.0, "judge_s": 0.1, "images": 2 * len(shard.rows)}}


def test_merge_restores_row_order_and_rejects_incomplete_or_mixed_results():
    from sdd.errors import ShardError
    from sdd.evaluation import merge, split

    ps = toy_prompt_set(16)
    shards = split(ps, 3)
    results = [_fake_result(ps, s) for s in shards]
    merged = merge(ps, list(reversed(results)))  # order of arrival does not matter
    assert merged.paths["base"] == [Path(f"/img/base/{i}.png") for i in range(16)]
    idx = ps.indices_for("red")
    assert merged.presence["red"]["erased"] == [i % 2 == 0 for i in idx]
    assert [s["index"] for s in merged.shards] == [0, 1, 2]

    with pytest.raises(ShardError, match="in no shard result"):
        merge(ps, results[:2])
    with pytest.raises(ShardError, match="appears twice"):
        merge(ps, results + [results[0]])
    other = _fake_result(ps, shards[1], {"base": {"unet_sha256": "a"}, "erased": {"unet_sha256": "other"}})
    with pytest.raises(ShardError, match="different erased weights"):
        merge(ps, [results[0], other, results[2]])
    with pytest.raises(ShardError, match="another prompt set"):
        merge(toy_prompt_set(15), results)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    root = tmp_path_factory.mktemp("prefect")
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: root / "results", PREFECT_SERVER_ANALYTICS_ENABLED: False}), \
            prefect_test_harness(server_startup_timeout=240):
        yield root


@pytest.mark.slow
def test_sharded_evaluation_on_two_dask_workers_equals_a_single_process_run(tmp_path, erased_toy, prefect_server):
    from tiny_models import one_thread

    from flows.shards import run_evaluate_sharded
    from sdd.config import EvalConfig, GatesConfig
    from sdd.evaluation import build_judge, evaluate
    from sdd.models import load_pipeline
    from sdd.prompts import load_prompts, write_prompt_set

    prompts = tmp_path / "prompts.jsonl"
    write_prompt_set(toy_prompt_set(16), prompts)
    ps = load_prompts(prompts)
    cfg = EvalConfig(num_inference_steps=5, batch_size=8, grid_images=2)
    gates = GatesConfig()

    with one_thread():
        single = evaluate(load_pipeline("toy", device="cpu"), load_pipeline(str(erased_toy), device="cpu"), ps,
                          build_judge(cfg.judge, device="cpu"), cfg, gates, tmp_path / "single",
                          base_name="toy", erased_name=str(erased_toy), progress=False)
        out = run_evaluate_sharded(n_workers=2, base_model="toy", erased_model=str(erased_toy), prompts=str(prompts),
                                   out_dir=str(tmp_path / "sharded"), shards=2, evaluation=cfg.model_dump(),
                                   gates=gates.model_dump())
    sharded = json.loads((tmp_path / "sharded" / "metrics.json").read_text())
    assert sharded == json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert sharded["concepts"]["red"]["n"] > 0 and sharded["quality"]["n"] > 0  # both kinds of rows were drawn
    assert sharded["concepts"]["red"] == single["concepts"]["red"]
    for name in ("report.md", "judgements.jsonl", "grids/red.png", "grids/benign.png"):
        assert (tmp_path / "sharded" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name

    assert out["shards"] == 2 and out["throughput"]["images"] == 32
    record = json.loads((tmp_path / "sharded" / "shards.json").read_text())
    assert sorted(s["rows"] for s in record["shards"]) == [8, 8]
    assert {s["timing"]["images"] for s in record["shards"]} == {16}
    assert os.getpid() not in {s["pid"] for s in record["shards"]}  # the shards ran in Dask worker processes
    folders = sorted(p.name for p in (tmp_path / "sharded" / "images" / "erased").iterdir())
    assert folders == ["shard-000-of-002", "shard-001-of-002"]
