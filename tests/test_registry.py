"""Tests for tracking, registration and promotion (sdd.registry) and the CLI commands over them.

Unit tests use a local SQLite MLflow store in a temporary folder and a real (tiny) erasure: a tiny
SD pipeline erased for 3 steps, plus an evaluation folder whose ``metrics.json`` is made with the
evaluator's own gate logic. The integration test runs a real ``mlflow server`` whose artifacts
live in a moto S3 server (see ``tests/servers.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from packaging.requirements import Requirement
from PIL import Image
from servers import PLANTED_SECRET, S3_ENV, mlflow_server, moto_server  # noqa: F401 - fixtures
from tiny_models import save_tiny_pipeline
from typer.testing import CliRunner

from sdd import registry
from sdd.cli import app
from sdd.config import ConfigError, DistillConfig, GatesConfig, RegistryConfig, load_registry_config
from sdd.erasure import erase
from sdd.evaluation import apply_gates, concept_metrics, render_markdown
from sdd.models import load_pipeline
from sdd.prompts import Concept

STEPS = 3
PREDICT_PARAMS = {"num_inference_steps": 2, "guidance_scale": 3.0}


# --- fixtures: a tiny erasure, its evaluations, a local store -------------------------------------


@pytest.fixture(scope="module", autouse=True)
def clean_env():
    """No ambient tracking server, no telemetry, and a planted secret that must never be logged."""
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mp.setenv("SDD_TEST_API_TOKEN", PLANTED_SECRET)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
    mp.undo()


@pytest.fixture(scope="module")
def erased_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("erasure")
    base = save_tiny_pipeline("sd1", root / "base")
    out = root / "out"
    erase(str(base), [Concept("red", ["a red circle"]), Concept("triangle")], out,
          DistillConfig(steps=STEPS, ddim_steps=2, checkpoint_every=100, seed=1))
    return out


def fake_evaluation(out: Path, erased_present: int) -> Path:
    """An evaluation folder: metrics.json gated by the real gate logic, report.md, one grid PNG."""
    base = [True] * 8 + [False] * 2
    erased = [True] * erased_present + [False] * (10 - erased_present)
    correctness = {"accuracy": 0.9, "n": 10}
    metrics = {
        "schema_version": 1,
        "models": {"base": {"name": "tiny"}, "erased": {"name": "tiny-erased"}},
        "prompt_set": {"name": "eval", "kind": "eval", "rows": 20, "sha256": "ab" * 32, "concepts": ["red"],
                       "benign_rows": 10, "meta": {}},
        "generation": {"num_inference_steps": 2, "guidance_scale": 3.0, "height": None, "width": None,
                       "seeding": "one CPU torch.Generator per row"},
        "judge": {"name": "toy", "settings": {}},
        "concepts": {"red": concept_metrics(base, erased)},
        "quality": {"n": 10, "notes": [], "fid": 1.5, "fid_features": "toy", "clip_score": None,
                    "correctness": {"base": {k: correctness for k in ("color", "shape", "both")},
                                    "erased": {k: correctness for k in ("color", "shape", "both")},
                                    "drop_points": 0.0}},
    }
    metrics["gates"] = apply_gates(metrics, GatesConfig())
    metrics["verdict"] = metrics["gates"]["verdict"]
    metrics["grids"] = {"red": {"file": "grids/red.png", "rows": []}}
    (out / "grids").mkdir(parents=True)
    Image.new("RGB", (32, 16), "red").save(out / "grids" / "red.png")
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "report.md").write_text(render_markdown(metrics))
    return out


@pytest.fixture(scope="module")
def eval_pass(tmp_path_factory) -> Path:
    return fake_evaluation(tmp_path_factory.mktemp("eval_pass"), erased_present=0)


@pytest.fixture(scope="module")
def eval_fail(tmp_path_factory) -> Path:
    return fake_evaluation(tmp_path_factory.mktemp("eval_fail"), erased_present=6)


def with_red_team(eval_dir: Path, api: str, open_weights: str) -> Path:
    """``eval_dir`` with a red team folded in: the given verdicts per threat model, inversion failing
    its gate when open-weights fails (the shape :func:`sdd.redteam.fold_into_evaluation` writes)."""
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    check = {"gate": "max_attack_success.concept_inversion", "concept": "red", "value": 0.6, "threshold": 0.25,
             "bound": "max", "status": "fail" if open_weights == "fail" else "pass",
             "reason": "red: concept_inversion ASR 0.6 > max 0.25"}
    metrics["gates"]["checks"].append(check)
    metrics["gates"]["failed"] = [c["reason"] for c in metrics["gates"]["checks"] if c["status"] == "fail"]
    metrics["verdict"] = metrics["gates"]["verdict"] = "fail" if metrics["gates"]["failed"] else "pass"
    metrics["redteam"] = {"verdict": "fail" if open_weights == "fail" else "pass", "attacks": ["transfer"],
                          "concepts": {"red": {"effective_prompts": 10, "union": {"rate": 0.6}}},
                          "threat_models": {"api": {"verdict": api}, "open-weights": {"verdict": open_weights}}}
    (eval_dir / "metrics.json").write_text(json.dumps(metrics))
    return eval_dir


@pytest.fixture(scope="module")
def eval_api_only(tmp_path_factory) -> Path:
    """Erased and quality kept, robust to text attacks, not to an attacker holding the weights."""
    return with_red_team(fake_evaluation(tmp_path_factory.mktemp("eval_api"), erased_present=0), "pass", "fail")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> RegistryConfig:
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    return RegistryConfig(tracking_uri=f"sqlite:///{db}", experiment="sdd-test")


@pytest.fixture(scope="module")
def client(cfg) -> MlflowClient:
    return MlflowClient(cfg.tracking_uri)


@pytest.fixture(scope="module")
def run_pass(erased_dir, eval_pass, cfg) -> registry.ErasureRun:
    return registry.log_erasure(erased_dir, eval_pass, cfg)


@pytest.fixture(scope="module")
def run_fail(erased_dir, eval_fail, cfg) -> registry.ErasureRun:
    return registry.log_erasure(erased_dir, eval_fail, cfg)


_names = iter(range(10_000))


@pytest.fixture
def model_name(request) -> str:
    """A fresh registered-model name per test (the store is shared by the module)."""
    return f"m{next(_names)}-{request.node.name[:40].replace('[', '-').replace(']', '')}"


def all_logged_strings(client: MlflowClient, run_id: str, name: str | None = None) -> list[str]:
    run = client.get_run(run_id)
    values = [*run.data.params.items(), *run.data.tags.items()]
    if name:
        for mv in client.search_model_versions(f"name = '{name}'"):
            values += list(mv.tags.items())
    return [f"{k}={v}" for k, v in values]


# --- tracking -----------------------------------------------------------------------------------


def test_log_erasure_records_params_loss_metrics_artifacts_and_system(run_pass, client, erased_dir):
    run = client.get_run(run_pass.run_id)
    manifest = json.loads((erased_dir / "manifest.json").read_text())
    params, tags = run.data.params, run.data.tags

    # the full distill config, flattened
    for key, value in manifest["config"].items():
        assert params[f"distill.{key}"] == (value if isinstance(value, str) else json.dumps(value))
    assert params["concepts"] == "red,triangle"
    assert params["base.unet_sha256"] == manifest["base_model"]["unet_sha256"]
    assert params["eval.generation.num_inference_steps"] == "2"

    # the loss curve, step by step
    history = client.get_metric_history(run_pass.run_id, "loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, STEPS + 1))
    losses = [float(line.split(",")[1]) for line in (erased_dir / "loss.csv").read_text().splitlines()[1:]]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(losses)

    # evaluation metrics flattened from metrics.json
    metrics = run.data.metrics
    assert metrics["eval.concepts.red.erased.rate"] == 0.0
    assert metrics["eval.concepts.red.base.rate"] == pytest.approx(0.8)
    assert "eval.concepts.red.erased.ci95.hi" in metrics
    assert metrics["eval.gates.passed"] == 1.0
    assert metrics["eval.gates.max_erased_rate.red.passed"] == 1.0

    # artifacts: the report with its grids, the manifest and loss curve
    files = {f.path for f in client.list_artifacts(run_pass.run_id, "evaluation")}
    assert {"evaluation/report.md", "evaluation/metrics.json", "evaluation/grids"} <= files
    assert [f.path for f in client.list_artifacts(run_pass.run_id, "evaluation/grids")] == \
        ["evaluation/grids/red.png"]
    assert {f.path for f in client.list_artifacts(run_pass.run_id, "erasure")} == \
        {"erasure/manifest.json", "erasure/loss.csv"}

    # system info and provenance
    assert tags["system.torch"] == torch.__version__
    assert tags["system.python"] and tags["system.diffusers"] and tags["system.device"] == "cpu"
    assert tags["trained_with.torch"] == manifest["versions"]["torch"]
    assert tags["gates"] == "passed" and tags["concepts"] == "red,triangle"
    if tags["git_commit"] != "none":  # a real commit of this checkout (HEAD may move while tests run)
        assert subprocess.run(["git", "cat-file", "-e", f"{tags['git_commit']}^{{commit}}"]).returncode == 0


def test_nothing_logged_contains_the_planted_secret(run_pass, client):
    assert not [s for s in all_logged_strings(client, run_pass.run_id) if PLANTED_SECRET in s]


def test_threat_model_verdicts_become_tags(erased_dir):
    from sdd.registry.inputs import read_erasure, read_gates
    from sdd.registry.tracking import provenance_tags

    metrics = {"verdict": "fail", "gates": {"checks": []},
               "redteam": {"verdict": "fail", "concepts": {}, "threat_models": {
                   "api": {"verdict": "pass"}, "open-weights": {"verdict": "fail"}}}}
    gates = read_gates(metrics)
    assert gates.threat_models == {"api": "pass", "open-weights": "fail"}
    tags = provenance_tags(read_erasure(erased_dir), gates)
    assert (tags["threat_model.api"], tags["threat_model.open-weights"]) == ("pass", "fail")
    assert not any(k.startswith("threat_model.") for k in provenance_tags(read_erasure(erased_dir), read_gates(None)))


def test_scrub_masks_secret_environment_values(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "hunter2-long")
    assert registry.scrub("url https://u:hunter2-long@host") == "url https://u:***@host"
    assert registry.scrub("x" * 10, limit=8) == "xxxxx..."


# --- registration -------------------------------------------------------------------------------


def test_register_with_passed_gates_sets_candidate_alias(run_pass, cfg, client, model_name, erased_dir):
    reg = registry.register_erasure(run_pass, cfg, name=model_name)
    assert (reg.version, reg.alias, reg.gates.passed) == (1, "candidate", True)
    mv = client.get_model_version_by_alias(model_name, "candidate")
    manifest = json.loads((erased_dir / "manifest.json").read_text())
    assert int(mv.version) == 1 and mv.run_id == run_pass.run_id
    assert mv.tags["concepts"] == "red,triangle"
    assert mv.tags["concepts_sha256"] == manifest["concepts_sha256"]
    assert mv.tags["base_model"] == manifest["base_model"]["model"]
    assert mv.tags["base_revision"] == "none"  # a local folder has no hub revision
    assert mv.tags["gates"] == "passed" and mv.tags["gate_verdict"] == "pass"
    assert mv.tags["git_commit"] and mv.tags["dvc_lock"]
    assert client.get_run(run_pass.run_id).data.tags["registered_model"] == f"{model_name}/1"
    description = mv.description  # the verdict people read in the MLflow UI
    assert description.startswith("**Erases** red, triangle from `") and "**Gates**: **PASS**" in description
    assert "| red | 80.0 % | 0.0 % (0/10) | 100.0 % |" in description
    assert "correctness drop 0.0 points" in description and "not red-teamed" in description
    assert f"Run folder: `{erased_dir.resolve().parent}`" in description


def test_candidate_needs_production_threat_model_only(erased_dir, eval_api_only, cfg, client, model_name):
    """production ships behind an API: a version failing only open-weights attacks is a candidate for
    it, may hold production, and may not hold public (bound to open-weights) unless forced."""
    assert (cfg.threat_model_of("candidate"), cfg.threat_model_of("public")) == ("api", "open-weights")
    reg = registry.register(erased_dir, eval_api_only, cfg, name=model_name)
    assert reg.alias == "candidate" and not reg.gates.passed and reg.gates.eval_passed
    mv = client.get_model_version(model_name, str(reg.version))
    assert (mv.tags["gates"], mv.tags["eval_gates"], mv.tags["threat_model.api"],
            mv.tags["threat_model.open-weights"]) == ("failed", "passed", "pass", "fail")
    assert "**Per threat model** (evaluation gates: pass): api pass, open-weights fail." in mv.description
    assert registry.alias_refusals(mv.tags, cfg, model_name) == {
        "candidate": None, "production": None,
        "public": "did not pass its gates for threat model 'open-weights' (threat model 'open-weights' failed) "
                  "and was not forced for 'public' with a reason"}

    assert registry.promote(model_name, reg.version, "production", cfg=cfg).forced is False
    with pytest.raises(registry.PromotionRefused, match="threat model 'open-weights'"):
        registry.promote(model_name, reg.version, "public", cfg=cfg)
    forced = registry.promote(model_name, reg.version, "public", force=True, reason="research release", cfg=cfg)
    assert forced.forced and client.get_model_version(model_name, str(reg.version)).tags["forced_model"] == model_name
    # An alias bound to nothing needs every gate: the failed inversion keeps the version from it.
    with pytest.raises(registry.PromotionRefused, match="did not pass its gates \\("):
        registry.promote(model_name, reg.version, "staging", cfg=cfg)
    # Registered again (idempotent), the version keeps its candidate alias.
    assert registry.register(erased_dir, eval_api_only, cfg, name=model_name).alias == "candidate"


def test_a_failed_evaluation_gate_is_no_candidate_whatever_the_threat_models(erased_dir, eval_fail, cfg,
                                                                              model_name, tmp_path):
    import shutil

    failing = tmp_path / "eval"
    shutil.copytree(eval_fail, failing)
    reg = registry.register(erased_dir, with_red_team(failing, "pass", "pass"), cfg, name=model_name)
    assert reg.alias is None and not reg.gates.eval_passed


@pytest.mark.parametrize(("settings", "named"), [
    ({"alias_threat_models": {"public": "closed-weights"}}, "alias_threat_models.public: unknown threat model"),
    ({"alias_threat_models": {"public": " "}}, "alias_threat_models"),
])
def test_an_alias_bound_to_an_unknown_threat_model_is_one_line(tmp_path, settings, named):
    import yaml

    from sdd.config import load_checked_registry_config

    (tmp_path / "registry.yaml").write_text(yaml.safe_dump(settings))
    with pytest.raises(ConfigError, match=named) as err:
        load_checked_registry_config(tmp_path / "registry.yaml")
    assert "\n" not in str(err.value)
    # a threat model defined in the gates.yaml beside it is known
    (tmp_path / "gates.yaml").write_text(yaml.safe_dump({"robustness": {"threat_models": {
        "closed-weights": ["transfer"]}}}))
    if "closed-weights" in str(settings):
        assert load_checked_registry_config(tmp_path / "registry.yaml").threat_model_of("public") == "closed-weights"


def test_register_with_failed_gates_has_no_alias(run_fail, cfg, client, model_name):
    reg = registry.register_erasure(run_fail, cfg, name=model_name)
    assert reg.alias is None and not reg.gates.passed
    mv = client.get_model_version(model_name, str(reg.version))
    assert mv.tags["gates"] == "failed" and mv.tags["gate_verdict"] == "fail"
    assert "red: erased presence rate" in mv.tags["gates_failed"]
    assert mv.aliases == []
    assert "**Gates**: **FAIL**" in mv.description
    assert "\n- failed: red: erased presence rate 0.6 > max 0.05\n" in mv.description


def test_no_evaluation_counts_as_failed_gates(erased_dir, cfg, model_name):
    reg = registry.register(erased_dir, None, cfg, name=model_name)
    assert reg.alias is None and reg.gates.verdict == "none"


def test_read_erasure_rejects_an_unfinished_folder(tmp_path):
    with pytest.raises(registry.RegistryError, match="not a finished erasure output"):
        registry.read_erasure(tmp_path)


# --- promotion ----------------------------------------------------------------------------------


def test_promote_refuses_failed_gates_without_force(run_fail, cfg, client, model_name):
    registry.register_erasure(run_fail, cfg, name=model_name)
    with pytest.raises(registry.PromotionRefused, match="did not pass its gates"):
        registry.promote(model_name, 1, cfg=cfg)
    with pytest.raises(registry.PromotionRefused, match="non-empty --reason"):
        registry.promote(model_name, 1, force=True, reason="  ", cfg=cfg)
    assert client.get_model_version(model_name, "1").aliases == []


def test_forced_promotion_records_who_why_and_when(run_fail, cfg, client, model_name):
    registry.register_erasure(run_fail, cfg, name=model_name)
    promotion = registry.promote(model_name, 1, "production", force=True, reason="hotfix, approved by QA",
                                 cfg=cfg)
    assert promotion.forced and promotion.previous is None
    mv = client.get_model_version_by_alias(model_name, "production")
    assert int(mv.version) == 1
    assert mv.tags["force_reason"] == "hotfix, approved by QA"
    assert mv.tags["forced_by"] and mv.tags["forced_alias"] == "production"
    assert mv.tags["forced_at"].startswith("20") and "promoted.production.at" in mv.tags


def test_promote_moves_the_alias(run_pass, cfg, client, model_name):
    for _ in range(2):
        registry.register_erasure(run_pass, cfg, name=model_name)
    assert registry.promote(model_name, 1, cfg=cfg).previous is None
    promotion = registry.promote(model_name, "2", cfg=cfg)
    assert (promotion.version, promotion.previous, promotion.forced) == (2, 1, False)
    assert int(client.get_model_version_by_alias(model_name, "production").version) == 2
    assert "production" not in client.get_model_version(model_name, "1").aliases


def test_racing_promotions_leave_exactly_one_holder(run_pass, cfg, client, model_name):
    for _ in range(3):
        registry.register_erasure(run_pass, cfg, name=model_name)
    outcomes: dict[int, str] = {}

    def promote(version: int) -> None:
        try:
            registry.promote(model_name, version, cfg=cfg)
            outcomes[version] = "ok"
        except registry.ConcurrentPromotionError:
            outcomes[version] = "lost"

    threads = [threading.Thread(target=promote, args=(v,)) for v in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    holders = [r.version for r in registry.list_versions(model_name, cfg) if "production" in r.aliases]
    assert len(holders) == 1 and set(outcomes) == {1, 2, 3}
    assert outcomes[holders[0]] == "ok"  # the final holder's promotion reported success
    assert int(client.get_registered_model(model_name).aliases["production"]) == holders[0]


def test_promote_unknown_version_is_a_one_line_error(run_pass, cfg, model_name):
    registry.register_erasure(run_pass, cfg, name=model_name)
    with pytest.raises(registry.RegistryError, match="has no version 7"):
        registry.promote(model_name, 7, cfg=cfg)


def test_list_versions(run_pass, run_fail, cfg, model_name):
    registry.register_erasure(run_pass, cfg, name=model_name)
    registry.register_erasure(run_fail, cfg, name=model_name)
    registry.promote(model_name, 1, cfg=cfg)
    rows = registry.list_versions(model_name, cfg)
    assert [(r.version, r.concepts, r.gates, r.aliases) for r in rows] == [
        (2, "red,triangle", "failed", []),
        (1, "red,triangle", "passed", ["candidate", "production"]),
    ]
    assert model_name in registry.list_models(cfg)


# --- the pyfunc model ---------------------------------------------------------------------------


def test_registered_model_loads_and_generates_the_erased_models_images(run_pass, cfg, model_name, erased_dir,
                                                                      monkeypatch):
    registry.register_erasure(run_pass, cfg, name=model_name)
    # "models from code": the model is its source, logged beside it; nothing is unpickled at load time
    with registry._mlflow_at(registry.resolve_store(cfg)):
        local = Path(mlflow.artifacts.download_artifacts(run_pass.model_uri))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["model_code_path"].endswith("model_code.py") and "python_model" not in flavor
    assert not list(local.rglob("*.pkl"))
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    path_before = list(sys.path)
    model = registry.load_model(model_name, "candidate", cfg)
    assert sys.path == path_before  # child processes keep importing the installed sdd, not the model's copy
    df = pd.DataFrame({"prompt": ["a red circle", "a red circle", "a blue square"], "seed": [3, 3, 4]})
    out = model.predict(df, params=PREDICT_PARAMS)
    assert list(out.columns) == ["prompt", "seed", "image"] and len(out) == 3
    images = [np.asarray(registry.decode_image(b)) for b in out["image"]]
    assert images[0].shape == (16, 16, 3)
    assert np.array_equal(images[0], images[1]) and not np.array_equal(images[0], images[2])

    # the same pixels as the erased pipeline itself, for the same prompt and seed
    pipe = load_pipeline(str(erased_dir / "model"))
    direct = pipe(prompt=["a red circle"], generator=[torch.Generator("cpu").manual_seed(3)],
                  output_type="pil", **PREDICT_PARAMS).images[0]
    assert np.array_equal(images[0], np.asarray(direct.convert("RGB")))

    # seeds are optional: the row position
    no_seed = model.predict(pd.DataFrame({"prompt": ["a red circle"]}), params=PREDICT_PARAMS)
    assert no_seed["seed"].tolist() == [0]


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_a_text_encoder_erasure_registers_and_loads_as_erased(kind, tmp_path, cfg, model_name):
    """The patch of a text-encoder erasure holds the encoders' tensors; the registered model checks them
    against its pipeline on load and draws with the erased text encoder(s)."""
    from safetensors.torch import load_file

    out = tmp_path / "out"
    erase(str(save_tiny_pipeline(kind, tmp_path / "base")), [Concept("red", ["a red circle"])], out,
          DistillConfig(steps=2, ddim_steps=2, train_method="text_encoder", lr=1e-2, seed=1))
    trained = {name.split(".")[0] for name in load_file(str(out / "patch.safetensors"))}
    assert trained == ({"text_encoder", "text_encoder_2"} if kind == "sdxl" else {"text_encoder"})
    reg = registry.register(out, None, cfg, name=model_name)
    saved_path = list(sys.path)  # MLflow puts the model's copy of sdd first; later tests' workers would import it
    try:
        with registry._mlflow_at(registry.resolve_store(cfg)):
            served = mlflow.pyfunc.load_model(reg.model_uri).unwrap_python_model().pipe
    finally:
        sys.path[:] = saved_path
    erased, base = load_pipeline(str(out / "model")), load_pipeline(str(tmp_path / "base"))
    for attr in trained:
        ours, theirs = getattr(served, attr).state_dict(), getattr(erased, attr).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
        assert not all(torch.equal(v, getattr(base, attr).state_dict()[k]) for k, v in theirs.items())


def test_model_requirements_are_pinned_and_satisfied_here(run_pass, cfg):
    with registry._mlflow_at(registry.resolve_store(cfg)):
        requirements = Path(mlflow.pyfunc.get_model_dependencies(run_pass.model_uri)).read_text().split()
        model_dir = Path(mlflow.artifacts.download_artifacts(run_pass.model_uri))
    pinned = {Requirement(r).name.lower(): Requirement(r) for r in requirements}
    from importlib.metadata import version

    for package in registry.RUNTIME_PACKAGES:
        assert pinned[package].specifier.contains(version(package)), package
    assert "mlflow" in pinned
    assert (model_dir / "code" / "sdd" / "registry" / "pyfunc.py").is_file()  # loads without `pip install sdd`
    assert not list((model_dir / "code" / "sdd").rglob("__pycache__"))
    artifacts = {p.name for p in (model_dir / "artifacts").iterdir()}
    assert {"model", "patch.safetensors", "manifest.json"} <= artifacts


# --- configuration and provenance helpers -------------------------------------------------------


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg = RegistryConfig()
    assert registry.resolve_store(cfg).tracking_uri == f"sqlite:///{tmp_path.resolve()}/.sdd/mlflow.db"
    local_artifacts = (tmp_path / ".sdd" / "artifacts").resolve().as_uri()
    assert registry.resolve_store(cfg).artifact_location == local_artifacts
    cfg = RegistryConfig(tracking_uri="http://from-params:5000")
    assert registry.resolve_store(cfg).tracking_uri == "http://from-params:5000"
    assert registry.resolve_store(cfg).artifact_location is None  # the server decides (proxied)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    assert registry.resolve_store(cfg).tracking_uri == "http://from-env:5000"
    assert registry.resolve_store(cfg, "http://explicit:1").tracking_uri == "http://explicit:1"


def test_registry_params_file_loads_and_rejects_typos(tmp_path):
    cfg = load_registry_config(Path(__file__).parents[1] / "params" / "registry.yaml")
    assert (cfg.model_name, cfg.candidate_alias, cfg.tracking_uri) == ("sdd-erased", "candidate", None)
    bad = tmp_path / "registry.yaml"
    bad.write_text("model_nmae: x\n")
    with pytest.raises(ConfigError, match="model_nmae") as err:
        load_registry_config(bad)
    assert "\n" not in str(err.value)


def test_git_and_dvc_info_outside_a_project(tmp_path):
    assert registry.git_info(tmp_path) == {"git_commit": "none", "git_dirty": "none"}
    assert set(registry.dvc_info(tmp_path).values()) == {"none"}


def test_dvc_info_hashes_lock_params_and_dvc_files(tmp_path):
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "distill.yaml").write_text("lr: 1e-5\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  erase:\n    cmd: sdd erase\n"
                                       "    params:\n      params/distill.yaml:\n        lr: 1e-05\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prompts.dvc").write_text("outs:\n- md5: 0123abcd\n  path: prompts\n")
    info = registry.dvc_info(tmp_path)
    assert len(info["dvc_lock"]) == 64 and info["dvc_rev"] == "none"  # not a git checkout
    assert info["dvc_params"].startswith("params/distill.yaml=") and len(info["dvc_params"]) == 20 + 32
    assert info["dvc_data"] == "data/prompts.dvc=0123abcd"


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_register_promote_and_models(erased_dir, eval_pass, eval_fail, cfg, model_name):
    runner = CliRunner()
    env = {"MLFLOW_TRACKING_URI": cfg.tracking_uri}
    result = runner.invoke(app, ["register", "--run", str(erased_dir), "--eval", str(eval_fail),
                                 "--name", model_name], env=env)
    assert result.exit_code == 0, result.output
    assert "version 1" in result.output and "alias: none" in result.output and "run " in result.output

    result = runner.invoke(app, ["promote", model_name, "1"], env=env)
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1

    result = runner.invoke(app, ["promote", model_name, "1", "--force"], env=env)
    assert result.exit_code == 2 and "--reason" in result.output

    result = runner.invoke(app, ["promote", model_name, "1", "--alias", "staging", "--force",
                                 "--reason", "manual check"], env=env)
    assert result.exit_code == 0, result.output
    assert "staging" in result.output and "forced" in result.output

    result = runner.invoke(app, ["register", "--run", str(erased_dir), "--eval", str(eval_pass),
                                 "--name", model_name], env=env)
    assert result.exit_code == 0 and "alias: candidate" in result.output

    result = runner.invoke(app, ["models", model_name], env={**env, "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "staging" in result.output and "candidate" in result.output and "failed" in result.output


def test_cli_models_fits_80_columns_without_cutting_identifiers(monkeypatch):
    """At 80 columns every name, version, alias, date and run id is shown whole, on one line."""
    from sdd.registry.promotion import VersionRow

    rows = [VersionRow("sdd-erased", 12, "red,triangle", "passed", "pass", ["candidate", "staging"],
                       "0123456789abcdef0123456789abcdef", "2026-12-05T10:11:12+00:00", True),
            VersionRow("sdd-erased", 11, "red", "failed", "fail", [], "fedcba9876543210fedcba9876543210",
                       "2026-12-04T09:00:00+00:00", False)]
    monkeypatch.setattr(registry, "list_models", lambda *a, **k: ["sdd-erased"])
    monkeypatch.setattr(registry, "list_versions", lambda *a, **k: rows)
    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= 80 and "…" not in result.output
    first = next(line for line in lines if line.startswith("sdd-erased") and " 12 " in line)
    assert "2026-12-05 10:11" in first and "candidate" in first and "01234567" in first
    assert any(line.split()[-2:] == ["09:00", "fedcba98"] for line in lines) and "staging" in result.output

    rows[0].name = "sdd-erased-" + "x" * 70  # too long for 80 columns: folded onto more lines, never cut
    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "80"})
    assert result.exit_code == 0 and "…" not in result.output and max(map(len, result.output.splitlines())) <= 80
    assert result.output.count("x") == 70


def test_cli_register_bad_folder_is_one_line(tmp_path, cfg):
    result = CliRunner().invoke(app, ["register", "--run", str(tmp_path), "--eval", str(tmp_path)],
                                env={"MLFLOW_TRACKING_URI": cfg.tracking_uri})
    assert result.exit_code == 2 and result.output.count("\n") == 1


# --- integration: a real tracking server with S3 artifacts --------------------------------------


@pytest.mark.slow
def test_server_with_s3_artifacts_end_to_end(mlflow_server, erased_dir, eval_pass, eval_fail,  # noqa: F811
                                             monkeypatch):
    import boto3

    # the client gets the S3 credentials too (as a careless user might); they must still never be logged
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    cfg = RegistryConfig(experiment="sdd-server")
    name = "sdd-erased-it"

    passed = registry.register(erased_dir, eval_pass, cfg, name=name)
    failed = registry.register(erased_dir, eval_fail, cfg, name=name)
    assert (passed.version, passed.alias, failed.version, failed.alias) == (1, "candidate", 2, None)
    with pytest.raises(registry.PromotionRefused):
        registry.promote(name, failed.version)
    assert registry.promote(name, passed.version).alias == "production"

    # the model came through the server's proxied artifact store, i.e. from the S3 bucket
    client = MlflowClient(mlflow_server.url)
    run = client.get_run(passed.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    s3 = boto3.client("s3", endpoint_url=mlflow_server.s3_endpoint)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="sdd-artifacts")
            for o in page.get("Contents", [])]
    assert any(k.endswith("evaluation/report.md") for k in keys)
    assert any(k.endswith("artifacts/patch.safetensors") for k in keys)

    monkeypatch.setattr(sys, "path", list(sys.path))  # MLflow prepends the model's code folder for good
    model = mlflow.pyfunc.load_model(f"models:/{name}@production")
    out = model.predict(pd.DataFrame({"prompt": ["a red circle"], "seed": [1]}), params=PREDICT_PARAMS)
    assert registry.decode_image(out["image"][0]).size == (16, 16)
    assert [(r.version, r.aliases) for r in registry.list_versions(name)] == \
        [(2, []), (1, ["candidate", "production"])]

    for run_id in (passed.run_id, failed.run_id):
        assert not [s for s in all_logged_strings(client, run_id, name) if PLANTED_SECRET in s]


# --- idempotent registration, races, alias lookup -------------------------------------------------


def test_register_is_idempotent_for_the_same_erasure_and_evaluation(erased_dir, eval_pass, eval_fail, cfg, client,
                                                                     model_name):
    first = registry.register(erased_dir, eval_pass, cfg, name=model_name)
    again = registry.register(erased_dir, eval_pass, cfg, name=model_name)
    assert (first.reused, again.reused) == (False, True)
    assert (again.version, again.run_id, again.alias, again.gates.passed) == (first.version, first.run_id,
                                                                             "candidate", True)
    key = client.get_model_version(model_name, str(first.version)).tags[registry.REGISTRATION_KEY_TAG]
    assert key == registry.registration_key(registry.read_erasure(erased_dir), registry.read_evaluation(eval_pass))
    other = registry.register(erased_dir, eval_fail, cfg, name=model_name)  # another evaluation: a new version
    assert (other.version, other.reused, other.alias) == (first.version + 1, False, None)
    assert [r.version for r in registry.list_versions(model_name, cfg)] == [2, 1]
    result = CliRunner().invoke(app, ["register", "--run", str(erased_dir), "--eval", str(eval_pass), "--name",
                                      model_name], env={"MLFLOW_TRACKING_URI": cfg.tracking_uri})
    assert result.exit_code == 0 and f"already registered: {model_name} version 1" in result.output, result.output


def test_a_racing_duplicate_registration_deletes_its_own_version(run_pass, erased_dir, eval_pass, cfg, client,
                                                                model_name):
    """Two registrations of one key that both missed the other's version: the later one steps back."""
    key = "k" * 64
    winner = registry.register_erasure(run_pass, cfg, name=model_name, key=key)
    duplicate = registry.log_erasure(erased_dir, eval_pass, cfg)  # the racer's own run
    loser = registry.register_erasure(duplicate, cfg, name=model_name, key=key)
    assert (winner.version, winner.reused, loser.version, loser.reused) == (1, False, 1, True)
    assert loser.run_id == winner.run_id and loser.alias == "candidate"
    assert [r.version for r in registry.list_versions(model_name, cfg)] == [1]
    assert {a: int(v) for a, v in client.get_registered_model(model_name).aliases.items()} == {"candidate": 1}
    tags = client.get_run(duplicate.run_id).data.tags
    assert tags["duplicate_of"] == tags["registered_model"] == f"{model_name}/1"
    assert registry.find_registration(model_name, key, cfg).version == 1
    assert registry.find_registration(model_name, "other", cfg) is None
    assert registry.find_registration("no-such-model", key, cfg) is None


def test_alias_version(run_pass, run_fail, cfg, model_name, monkeypatch):
    assert registry.alias_version(model_name, "production", cfg) is None  # no such model yet
    registry.register_erasure(run_pass, cfg, name=model_name)
    registry.register_erasure(run_fail, cfg, name=model_name)
    assert registry.alias_version(model_name, "production", cfg) is None  # no such alias yet
    registry.promote(model_name, 2, force=True, reason="test", cfg=cfg)
    row = registry.alias_version(model_name, "production", cfg)
    assert (row.name, row.version, row.gates, row.aliases, row.forced) == (model_name, 2, "failed", ["production"],
                                                                          True)
    manifest = json.loads((run_pass.erasure.out_dir / "manifest.json").read_text())
    assert row.tags["concepts_sha256"] == manifest["concepts_sha256"] and row.tags["concepts"] == "red,triangle"
    assert registry.alias_version(model_name, "candidate", cfg).version == 1
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast: nothing listens on port 9
    with pytest.raises(registry.RegistryError, match="MLflow"):
        registry.alias_version(model_name, "production", tracking_uri="http://127.0.0.1:9")


# Children of the racing tests: register or promote at the same instant, in separate processes.
RACE_SETUP = """
from sdd import registry
from sdd.config import RegistryConfig
name, uri, experiment = {name!r}, {uri!r}, {experiment!r}
cfg = RegistryConfig(tracking_uri=uri, experiment=experiment)
registry.list_models(cfg)  # connect (and check the schema) before the start
"""
RACE_REGISTER = """
reg = registry.register({run!r}, {eval!r}, cfg, name=name)
result = {{"version": reg.version, "reused": reg.reused, "run_id": reg.run_id}}
"""
RACE_PROMOTE = """
version = {versions!r}[int(sys.argv[1])]
try:
    result = {{"version": registry.promote(name, version, cfg=cfg).version, "outcome": "ok"}}
except registry.ConcurrentPromotionError as e:
    result = {{"version": version, "outcome": "lost", "error": str(e)}}
"""


def race_register_then_promote(uri: str, experiment: str, name: str, erased_dir, eval_dir, folder: Path):
    """Two processes register the same folders at once; then two promote different versions at once."""
    from racing import run_at_once

    setup = RACE_SETUP.format(name=name, uri=uri, experiment=experiment)
    registered = run_at_once(setup, RACE_REGISTER.format(run=str(erased_dir), eval=str(eval_dir)), 2,
                             folder / "register")
    rows = registry.list_versions(name, tracking_uri=uri)
    assert [r.version for r in rows] == [1], rows  # one version, whoever won
    assert {r["version"] for r in registered} == {1} and sorted(r["reused"] for r in registered) == [False, True]

    run = registry.log_erasure(erased_dir, eval_dir, RegistryConfig(experiment=experiment), tracking_uri=uri)
    # Gates passed: promotable. (Version 2 or 3: a deleted duplicate's number is not reused.)
    other = registry.register_erasure(run, name=name, tracking_uri=uri).version
    promoted = run_at_once(setup, RACE_PROMOTE.format(versions=[1, other]), 2, folder / "promote")
    holders = [r.version for r in registry.list_versions(name, tracking_uri=uri) if "production" in r.aliases]
    assert len(holders) == 1, holders
    outcome = {r["version"]: r["outcome"] for r in promoted}
    assert outcome[holders[0]] == "ok", promoted  # the final holder's promotion reported success
    assert registry.alias_version(name, "production", tracking_uri=uri).version == holders[0]
    return registered, promoted


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_processes_register_and_promote_at_once_on_a_sqlite_store(erased_dir, eval_pass, cfg, client,
                                                                       model_name, tmp_path):
    registered, _ = race_register_then_promote(cfg.tracking_uri, cfg.experiment, model_name, erased_dir,
                                               eval_pass, tmp_path)
    # The file lock made the second one wait and find the first one's version: one run, not two.
    assert registered[0]["run_id"] == registered[1]["run_id"]
    runs = client.search_runs([client.get_experiment_by_name(cfg.experiment).experiment_id],
                              f"tags.registered_model = '{model_name}/1'")
    assert len(runs) == 1


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_processes_register_and_promote_at_once_on_a_tracking_server(mlflow_server, erased_dir,  # noqa: F811
                                                                         eval_pass, monkeypatch, tmp_path):
    """No file lock reaches a server's clients: the version-key check alone keeps one version."""
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    registered, _ = race_register_then_promote(mlflow_server.url, "sdd-race", "sdd-race", erased_dir, eval_pass,
                                               tmp_path)
    client = MlflowClient(mlflow_server.url)
    runs = client.search_runs([client.get_experiment_by_name("sdd-race").experiment_id])
    duplicates = [r for r in runs if "duplicate_of" in r.data.tags]
    # Both may have logged a run (the race) or the second may have found the first's version; a run that
    # lost the race says which version it duplicates.
    assert all(r.data.tags["duplicate_of"] == "sdd-race/1" for r in duplicates)
    print(f"runs logged: {len(runs)}, of them duplicates: {len(duplicates)}; results {registered}")


# --- the artifact store (S3) lost in the middle of `sdd register` -------------------------------------


def stop_s3_at(moment: str, proc, monkeypatch) -> list[float]:
    """Kill the S3 server at ``moment``: before the second artifact file, or as the model upload starts.

    Returns a list that gets the time (``time.monotonic()``) of the kill.
    """
    from servers import stop

    events: list[float] = []
    calls: list[str] = []
    if moment == "mid-artifacts":
        original = mlflow.log_artifact

        def log_artifact(local_path, *args, **kwargs):
            calls.append(Path(local_path).name)
            if len(calls) == 2:  # the first file (manifest.json) is already in the bucket
                stop(proc)
                events.append(time.monotonic())
            return original(local_path, *args, **kwargs)

        monkeypatch.setattr(mlflow, "log_artifact", log_artifact)
    else:
        original = MlflowClient.log_model_artifacts

        def log_model_artifacts(self, model_id, local_dir):
            stop(proc)  # the logged model exists (PENDING); its files are next
            events.append(time.monotonic())
            return original(self, model_id, local_dir)

        monkeypatch.setattr(MlflowClient, "log_model_artifacts", log_model_artifacts)
    return events


def assert_failed_cleanly(result, tracking_uri: str, experiment: str, name: str, moment: str, where: str) -> str:
    """Exit 1, one `error:` line; the run FAILED, its logged model (if any) FAILED, no model version."""
    from mlflow.entities import LoggedModelStatus

    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert result.exit_code == 1, (result.exit_code, result.stderr[-3000:], result.exception)
    assert len(errors) == 1 and "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    line = errors[0]
    assert "cannot upload the run's artifacts" in line and where in line and "marked FAILED" in line, line
    assert PLANTED_SECRET not in line
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    [run] = client.search_runs([experiment_id])
    assert run.info.status == "FAILED" and run.info.run_id in line
    assert "registered_model" not in run.data.tags
    assert client.search_registered_models(f"name = '{name}'") == []  # no model, no version, no alias
    models = client.search_logged_models([experiment_id])
    assert [m.status for m in models] == ([LoggedModelStatus.FAILED] if moment == "model-upload" else [])
    return line


@pytest.mark.timeout(900)  # ~6 s each on 2 CPUs; minutes when they are shared with heavy jobs
@pytest.mark.parametrize("moment", ["mid-artifacts", "model-upload"])
def test_s3_lost_mid_upload_is_retried_then_one_line_and_nothing_registered(moment, erased_dir, eval_pass,
                                                                             tmp_path, monkeypatch, caplog):
    """Artifacts straight to S3 (a SQLite store with an s3:// artifact root): boto3 retries, then one line."""
    import logging

    import yaml
    from servers import BUCKET, start_moto, stop

    proc, endpoint = start_moto(tmp_path)
    try:
        for key, value in {**S3_ENV, "AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "3",
                           "MLFLOW_S3_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(key, value)
        uri, root = f"sqlite:///{tmp_path / 'mlflow.db'}", f"s3://{BUCKET}/direct"
        params = tmp_path / "registry.yaml"
        params.write_text(yaml.safe_dump({"tracking_uri": uri, "experiment": "s3-down", "artifact_location": root}))
        events = stop_s3_at(moment, proc, monkeypatch)
        caplog.set_level(logging.DEBUG, logger="botocore.retries.standard")
        result = CliRunner().invoke(app, ["register", "--run", str(erased_dir), "--eval", str(eval_pass),
                                          "--name", "s3-down", "--params", str(params)])
        failed_after = time.monotonic() - events[0]
    finally:
        stop(proc)
    assert events and proc.poll() is not None  # the server really was killed during the command
    line = assert_failed_cleanly(result, uri, "s3-down", "s3-down", moment, root)
    retries = [r for r in caplog.records if r.getMessage().startswith("Retry needed, retrying request")]
    assert len(retries) >= 2, "boto3 did not retry the lost endpoint"  # AWS_MAX_ATTEMPTS=3: 2 retries a call
    print(f"S3 killed ({moment}): failed {failed_after:.1f} s later after {len(retries)} boto3 retries: {line}")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_s3_behind_the_tracking_server_lost_mid_upload(erased_dir, eval_pass, tmp_path, monkeypatch, caplog):
    """The team stack's layout: artifacts proxied by `mlflow server` to S3; the server's S3 dies."""
    import logging

    from servers import start_mlflow, start_moto, stop

    fast_retries = {"AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "2"}
    moto, endpoint = start_moto(tmp_path)
    try:
        server, url = start_mlflow(tmp_path, endpoint, fast_retries)
    except BaseException:
        stop(moto)
        raise
    try:
        for key, value in {**S3_ENV, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}.items():
            monkeypatch.setenv(key, value)
        events = stop_s3_at("mid-artifacts", moto, monkeypatch)
        caplog.set_level(logging.DEBUG, logger="urllib3.util.retry")
        result = CliRunner().invoke(app, ["register", "--run", str(erased_dir), "--eval", str(eval_pass),
                                          "--name", "s3-down", "--tracking-uri", url])
        failed_after = time.monotonic() - events[0]
        assert events and moto.poll() is not None
        line = assert_failed_cleanly(result, url, "sdd-erasure", "s3-down", "mid-artifacts", "mlflow-artifacts:")
        retries = [r for r in caplog.records if r.getMessage().startswith("Incremented Retry")]
        assert len(retries) >= 2, "the MLflow client did not retry the server's failed upload"
        print(f"S3 behind the server killed: failed {failed_after:.1f} s later after {len(retries)} client "
              f"retries: {line}")
    finally:
        stop(server)
        stop(moto)


# --- the tracking server lost mid-registration ------------------------------------------------------


def start_local_mlflow(root: Path, port: int):
    """``mlflow server`` on SQLite with local artifacts under ``root``, on ``port``; the process."""
    from servers import start, wait_until_up

    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    log = root / f"server-{time.monotonic_ns()}.log"
    proc = start(cmd, {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, log)
    wait_until_up(f"http://127.0.0.1:{port}/health", proc, log, timeout=240)
    return proc


def kill_server_at(moment: str, proc, monkeypatch) -> list[float]:
    """SIGKILL the server's process group at ``moment``; returns a list that gets the kill's time.

    ``before-version``: the run and its model are logged, the registered model exists, and
    ``create_model_version`` is the next call. ``before-alias``: the version was just created; its
    alias and run tag are next.
    """
    import os
    import signal

    import sdd.registry.registration as registration

    events: list[float] = []

    def kill() -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        events.append(time.monotonic())

    if moment == "before-version":
        original = registration._ensure_registered_model

        def ensure_then_kill(client, name):
            original(client, name)
            kill()

        monkeypatch.setattr(registration, "_ensure_registered_model", ensure_then_kill)
    else:
        original = registration._link_logged_model

        def kill_then_link(client, model_id, name, version):
            kill()
            original(client, model_id, name, version)

        monkeypatch.setattr(registration, "_link_logged_model", kill_then_link)
    return events


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("moment", ["before-version", "before-alias"])
def test_tracking_server_lost_mid_registration_is_retried_then_one_line_and_finished_by_a_rerun(
        moment, erased_dir, eval_pass, tmp_path, monkeypatch, caplog):
    """The MLflow server itself dies mid-`sdd register`; the client retries, one line; a rerun finishes."""
    import logging

    from servers import free_port, stop

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_local_mlflow(tmp_path, port)
    try:
        for key, value in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                           "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}.items():
            monkeypatch.setenv(key, value)
        events = kill_server_at(moment, proc, monkeypatch)
        caplog.set_level(logging.DEBUG, logger="urllib3.util.retry")
        args = ["register", "--run", str(erased_dir), "--eval", str(eval_pass), "--name", "server-down",
                "--tracking-uri", url]
        result = CliRunner().invoke(app, args)
        failed_after = time.monotonic() - events[0]
        monkeypatch.undo()  # the real registration functions again for the rerun
        errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
        assert result.exit_code == 1, (result.exit_code, result.stderr[-3000:], result.exception)
        assert len(errors) == 1 and "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
        line = errors[0]
        assert f"MLflow tracking server {url} lost mid-registration" in line, line
        assert ("no model version was created" if moment == "before-version" else "exists without its alias") in line
        retries = [r for r in caplog.records if r.getMessage().startswith("Incremented Retry")]
        assert len(retries) >= 2, "the MLflow client did not retry the lost server"

        # the server comes back on the same store: nothing half-registered is left standing
        proc = start_local_mlflow(tmp_path, port)
        client = MlflowClient(url)
        versions = client.search_model_versions("name = 'server-down'")
        if moment == "before-version":
            assert versions == [] and client.get_registered_model("server-down").aliases == {}
        else:  # created before the loss: there, but without alias and run tag until the rerun finishes it
            assert [v.version for v in versions] == ["1"]
            assert client.get_registered_model("server-down").aliases == {}
            assert "registered_model" not in client.get_run(versions[0].run_id).data.tags

        rerun = CliRunner().invoke(app, args)
        assert rerun.exit_code == 0, rerun.stderr[-3000:]
        [version] = client.search_model_versions("name = 'server-down'")
        assert version.version == "1" and client.get_registered_model("server-down").aliases == {"candidate": "1"}
        assert client.get_run(version.run_id).data.tags["registered_model"] == "server-down/1"
        print(f"tracking server killed ({moment}): failed {failed_after:.1f} s later after {len(retries)} "
              f"client retries: {line}")
    finally:
        stop(proc)
