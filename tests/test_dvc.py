"""The DVC side of the project: ``dvc.yaml`` really reproduces, tracks and moves the toy-world run.

Fast tests check the pipeline's declarations, ``sdd plots`` and the lineage tags of
:func:`sdd.registry.dvc_info` (on a small fake ``dvc.lock``). The slow ones copy the project (what
the pipeline needs: ``sdd/``, ``params/``, ``dvc.yaml``, ``.dvc/``) into a fresh git repository, as a
clean clone would be, write tiny params and run the real DVC CLI on it:

* ``dvc repro`` builds prompts -> distill -> evaluate -> plots; metrics.json and the PNG plots exist;
* ``dvc status`` names exactly the stage whose dependencies changed (concepts -> prepare,
  eval settings -> evaluate);
* an S3 remote (a local moto server) configured as the README says -- bucket URL in the tracked
  ``.dvc/config``, endpoint and credentials in the git-ignored ``.dvc/config.local`` -- takes
  ``dvc push``; after deleting the cache and every output, ``dvc pull`` brings them back byte for byte;
* ``dvc exp run -S params/distill.yaml:lr=...`` reruns distill onwards and ``dvc metrics diff``
  shows what changed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from servers import BUCKET, PLANTED_SECRET, S3_ENV, moto_server  # noqa: F401 - fixture
from typer.testing import CliRunner

from sdd import registry
from sdd.cli import app

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAGES = ("prepare", "distill", "evaluate", "redteam", "plots")
#: What the pipeline needs from the project; everything else (tests, flows, infra...) is not a dependency.
PROJECT_PATHS = ("sdd", "params", "dvc.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore")
#: Tiny settings for the copy: 4 optimizer steps of 2 samples, 4 sampler steps everywhere.
TINY_DISTILL = {"steps": 4, "batch_size": 2, "ddim_steps": 4, "checkpoint_every": 4, "lr": 1.0e-3, "seed": 0}
TINY_EVAL = {"num_inference_steps": 4, "grid_images": 4}
TINY_REDTEAM = {"num_inference_steps": 4, "grid_images": 4, "transfer": {"per_prompt": 1},
                "adversarial_tokens": {"steps": 2, "max_prompts": 2, "check_every": 1},
                "concept_inversion": {"steps": 2, "images": 2, "batch_size": 2},
                "relearning": {"steps": 2, "images": 2, "batch_size": 2},
                "cost_curves": {"inversion_steps": [1, 2], "relearning_steps": [1, 3]}}
EXPERIMENT_LR = 0.05


# --- fast: declarations, `sdd plots`, lineage tags ------------------------------------------------


def _dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))


def _out_paths(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def test_pipeline_declares_png_image_plots_and_caches_every_data_output():
    stages = _dvc_yaml()["stages"]
    assert set(STAGES) <= set(stages) and stages["toy_world"]["frozen"] is True
    plots = stages["plots"]
    assert plots["cmd"].startswith("sdd plots ")
    assert _out_paths(plots["plots"]) == ["data/plots/loss.png", "data/plots/rates.png"]
    assert {"data/erased/loss.csv", "data/eval/rates.csv", "sdd/plots.py"} <= set(plots["deps"])
    assert "data/eval/metrics.json" in _out_paths(stages["evaluate"]["metrics"])
    # Everything under data/ goes to the DVC cache (git ignores /data/), so push/pull and
    # `dvc metrics diff` against older revisions have every file.
    for name in STAGES:
        for kind in ("outs", "metrics", "plots"):
            for entry in stages[name].get(kind) or []:
                if isinstance(entry, dict):
                    path, opts = next(iter(entry.items()))
                    assert not path.startswith("data/") or (opts or {}).get("cache", True), (name, path)


def test_git_ignores_outputs_and_local_dvc_config_and_tracked_config_has_no_remote_secrets():
    paths = ["data/eval/metrics.json", ".dvc/config.local", ".dvc/cache/files", ".dvc/tmp/x", "dvc_plots/index.html"]
    check = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert check.stdout.split() == paths, check.stderr
    tracked = (ROOT / ".dvc" / "config").read_text(encoding="utf-8")
    for secret_setting in ("endpointurl", "access_key_id", "secret_access_key", "session_token"):
        assert secret_setting not in tracked


def _write_csvs(tmp_path: Path) -> tuple[Path, Path]:
    loss, rates = tmp_path / "loss.csv", tmp_path / "rates.csv"
    loss.write_text("step,loss\n" + "".join(f"{s},{1 / s:.4f}\n" for s in range(1, 61)))
    rates.write_text("concept,model,rate\nred,base,0.98\nred,erased,0.08\ntriangle,base,0.9\n"
                     "triangle,erased,0.5\n")
    return loss, rates


def test_sdd_plots_writes_identical_pngs_for_identical_inputs(tmp_path):
    loss, rates = _write_csvs(tmp_path)
    runner = CliRunner()
    outputs = []
    for out in (tmp_path / "a", tmp_path / "b"):
        result = runner.invoke(app, ["plots", "--loss", str(loss), "--rates", str(rates), "--out", str(out)])
        assert result.exit_code == 0, result.output
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert set(outputs[0]) == {"loss.png", "rates.png"}
    assert all(data.startswith(PNG_MAGIC) for data in outputs[0].values())
    assert outputs[0] == outputs[1]  # no timestamp or version in the files: DVC sees no spurious change


def test_sdd_plots_bad_input_is_one_line(tmp_path):
    loss, rates = _write_csvs(tmp_path)
    loss.write_text("step,value\n1,0.5\n")
    result = CliRunner().invoke(app, ["plots", "--loss", str(loss), "--rates", str(rates),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "loss" in result.output and result.output.count("\n") == 1
    result = CliRunner().invoke(app, ["plots", "--loss", str(tmp_path / "missing.csv"), "--rates", str(rates)])
    assert result.exit_code == 2 and "file not found" in result.output


FAKE_CONCEPTS = "active: colors\nsets:\n  colors:\n    base_model: toy\n    concepts: [red]\n"
FAKE_LOCK = """\
schema: '2.0'
stages:
  prepare:
    cmd: sdd prompts build --out data/prompts
    deps:
    - path: sdd/prompts.py
      hash: md5
      md5: 11111111111111111111111111111111
      size: 10
    params:
      params/concepts.yaml:
        active: colors
        sets:
          colors:
            base_model: toy
            concepts:
            - red
    outs:
    - path: data/prompts
      hash: md5
      md5: 22222222222222222222222222222222.dir
      size: 100
      nfiles: 4
  distill:
    cmd: sdd erase
    params:
      params/distill.yaml:
        lr: 0.001
    outs:
    - path: data/erased/model
      hash: md5
      md5: 33333333333333333333333333333333.dir
    - path: data/erased/loss.csv
      hash: md5
      md5: 44444444444444444444444444444444
"""


def _fake_project(root: Path) -> Path:
    (root / "params").mkdir(parents=True)
    (root / "params" / "concepts.yaml").write_text(FAKE_CONCEPTS)
    (root / "params" / "distill.yaml").write_text("lr: 0.001\n")
    (root / "dvc.lock").write_text(FAKE_LOCK)
    return root


def test_dvc_info_leads_to_the_concept_list_and_the_prompt_sets(tmp_path):
    project = _fake_project(tmp_path)
    info = registry.dvc_info(project)
    assert info["dvc_concepts"] == hashlib.md5(FAKE_CONCEPTS.encode()).hexdigest()
    assert info["dvc_prompts"] == "22222222222222222222222222222222.dir"
    assert info["dvc_concepts_locked"] == "true"  # the prompts in the lock were built from this list
    assert info["dvc_outs"] == ("data/erased/loss.csv=44444444444444444444444444444444,"
                                "data/erased/model=33333333333333333333333333333333.dir,"
                                "data/prompts=22222222222222222222222222222222.dir")
    assert info["dvc_params"] == (f"params/concepts.yaml={info['dvc_concepts']},"
                                  f"params/distill.yaml={hashlib.md5(b'lr: 0.001' + bytes([10])).hexdigest()}")
    assert info["dvc_rev"] == "none" and len(info["dvc_lock"]) == 64  # not a git checkout

    # The concept list edited after the lock was written: the prompts hash no longer describes it.
    (project / "params" / "concepts.yaml").write_text(FAKE_CONCEPTS.replace("[red]", "[red, triangle]"))
    changed = registry.dvc_info(project)
    assert changed["dvc_concepts_locked"] == "false" and changed["dvc_concepts"] != info["dvc_concepts"]
    assert changed["dvc_prompts"] == info["dvc_prompts"]


def test_dvc_info_without_lock_or_with_a_broken_one(tmp_path):
    project = _fake_project(tmp_path)
    (project / "dvc.lock").unlink()
    info = registry.dvc_info(project)
    assert info["dvc_concepts"] == hashlib.md5(FAKE_CONCEPTS.encode()).hexdigest()
    assert {k: v for k, v in info.items() if k != "dvc_concepts"} == dict.fromkeys(
        ("dvc_rev", "dvc_lock", "dvc_params", "dvc_data", "dvc_prompts", "dvc_concepts_locked", "dvc_outs"),
        "none")
    for broken in ("stages: [1, 2]\n", "- just a list\n", "stages:\n  x: 3\n", ": : :\n"):
        (project / "dvc.lock").write_text(broken)
        info = registry.dvc_info(project)
        assert info["dvc_prompts"] == info["dvc_outs"] == info["dvc_concepts_locked"] == "none", broken


# --- slow: the real DVC CLI on a copy of the project ----------------------------------------------


def _env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DVC_"))}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # `sdd` of this venv
        "PYTHONPATH": str(project),  # ... importing the copy's sdd/ (and its toy world), not this checkout's
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "DVC_NO_ANALYTICS": "1", "GIT_TERMINAL_PROMPT": "0",
    })
    return env


def dvc(project: Path, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=_env(project),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def git(project: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=project, env=_env(project), capture_output=True, text=True,
                          check=True, timeout=120).stdout


def dvc_json(project: Path, *args: str):
    return json.loads(dvc(project, *args, "--json").stdout or "null")


def _copy_project(dest: Path) -> Path:
    for rel in PROJECT_PATHS:
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        elif src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _write_yaml(path: Path, updates: dict) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    path.write_text(yaml.safe_dump({**data, **updates}, sort_keys=False), encoding="utf-8")


def _output_digests(project: Path) -> dict[str, str]:
    """md5 of every file under data/ but the distill checkpoint (a resume aid, not a pipeline output)."""
    data = project / "data"
    return {str(p.relative_to(project)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*")) if p.is_file() and "checkpoint" not in p.relative_to(data).parts
            and p.name != ".gitignore"}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A fresh git repository holding the project with tiny params, after `dvc repro` (lock committed)."""
    project = _copy_project(tmp_path_factory.mktemp("dvc") / "project")
    _write_yaml(project / "params" / "distill.yaml", TINY_DISTILL)
    _write_yaml(project / "params" / "eval.yaml", TINY_EVAL)
    _write_yaml(project / "params" / "redteam.yaml", TINY_REDTEAM)
    git(project, "init", "-q", "-b", "main")
    git(project, "config", "user.name", "sdd test")
    git(project, "config", "user.email", "sdd-test@example.invalid")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "project with tiny params")
    repro = dvc(project, "repro")
    git(project, "add", "dvc.lock")
    git(project, "commit", "-q", "-m", "dvc repro")
    return project, repro


@pytest.mark.slow
def test_repro_on_a_clean_clone_writes_metrics_and_png_plots(pipeline):
    project, repro = pipeline
    for stage in STAGES:
        assert f"Running stage '{stage}'" in repro.stdout
    assert "Running stage 'toy_world'" not in repro.stdout  # frozen: the committed toy world is used
    metrics = json.loads((project / "data" / "eval" / "metrics.json").read_text())
    assert metrics["generation"]["num_inference_steps"] == TINY_EVAL["num_inference_steps"]
    redteam = json.loads((project / "data" / "redteam" / "metrics.json").read_text())
    assert set(redteam["redteam"]["red"]["attacks"]) == {"transfer", "adversarial_tokens", "concept_inversion",
                                                         "relearning"}
    assert set(redteam["gates"]["threat_models"]) == {"api", "open-weights"}
    assert (project / "data" / "redteam" / redteam["cost_curve_plots"]["red"]).read_bytes().startswith(PNG_MAGIC)
    assert set(redteam["redteam"]["red"]["cost_curves"]["relearning"]["base"]) == {"1", "3"}
    for name in ("loss.png", "rates.png"):
        assert (project / "data" / "plots" / name).read_bytes().startswith(PNG_MAGIC)
    with open(project / "data" / "erased" / "loss.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == TINY_DISTILL["steps"]

    (shown,) = dvc_json(project, "metrics", "show").values()  # one revision: the workspace
    red = shown["data"]["data/eval/metrics.json"]["data"]["concepts"]["red"]
    assert red["base"]["rate"] == metrics["concepts"]["red"]["base"]["rate"]
    assert dvc_json(project, "status") == {}
    assert git(project, "status", "--porcelain") == ""  # every output is DVC's, none leaks into git

    plots = dvc_json(project, "plots", "show")["data"]
    for name in ("loss.png", "rates.png"):  # rendered as images: no Vega, no CDN needed to look at them
        assert [p["type"] for p in plots[f"data/plots/{name}"]] == ["image"]
    assert {p["type"] for p in plots["data/erased/loss.csv"]} == {"vega"}

    # Lineage: the registry's tags name this lock's prompt sets and the concept list they came from.
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    prepare_outs = {o["path"]: o["md5"] for o in lock["stages"]["prepare"]["outs"]}
    info = registry.dvc_info(project)
    assert info["dvc_prompts"] == prepare_outs["data/prompts"]
    assert info["dvc_concepts"] == hashlib.md5((project / "params" / "concepts.yaml").read_bytes()).hexdigest()
    assert info["dvc_concepts_locked"] == "true"
    assert info["dvc_rev"] == git(project, "rev-parse", "HEAD").strip()
    assert registry.git_info(project) == {"git_commit": info["dvc_rev"], "git_dirty": "false"}


@pytest.mark.slow
def test_status_names_exactly_the_stage_whose_dependencies_changed(pipeline):
    project, _ = pipeline
    concepts, evals = project / "params" / "concepts.yaml", project / "params" / "eval.yaml"
    originals = {p: p.read_bytes() for p in (concepts, evals)}
    try:
        data = yaml.safe_load(concepts.read_text())
        data["sets"][data["active"]]["concepts"].append("triangle")
        concepts.write_text(yaml.safe_dump(data, sort_keys=False))
        # prepare builds the set's prompts; distill, evaluate and redteam load the set's base model
        assert set(dvc_json(project, "status")) == {"prepare", "distill", "evaluate", "redteam"}
        concepts.write_bytes(originals[concepts])

        _write_yaml(evals, {"grid_images": TINY_EVAL["grid_images"] + 1})
        assert set(dvc_json(project, "status")) == {"evaluate"}
    finally:
        for path, content in originals.items():
            path.write_bytes(content)
    assert dvc_json(project, "status") == {}


@pytest.mark.slow
def test_s3_remote_push_then_pull_restores_outputs_byte_identical(pipeline, moto_server):  # noqa: F811
    project, _ = pipeline
    url = f"s3://{BUCKET}/dvc-{uuid.uuid4().hex[:8]}"
    # As the README says: the bucket URL is shared (tracked); endpoint and credentials stay local.
    dvc(project, "remote", "add", "--default", "storage", url)
    dvc(project, "remote", "modify", "--local", "storage", "endpointurl", moto_server.endpoint)
    dvc(project, "remote", "modify", "--local", "storage", "access_key_id", S3_ENV["AWS_ACCESS_KEY_ID"])
    dvc(project, "remote", "modify", "--local", "storage", "secret_access_key", PLANTED_SECRET)
    dvc(project, "remote", "modify", "--local", "storage", "region", "us-east-1")
    assert git(project, "status", "--porcelain").split() == ["M", ".dvc/config"]  # config.local is ignored
    git(project, "commit", "-q", "-m", "DVC remote", ".dvc/config")
    tracked = (project / ".dvc" / "config").read_text()
    assert url in tracked and moto_server.endpoint not in tracked and PLANTED_SECRET not in tracked
    assert PLANTED_SECRET in (project / ".dvc" / "config.local").read_text()
    assert PLANTED_SECRET not in git(project, "log", "-p", "--all")

    before = _output_digests(project)
    assert any(p.startswith("data/eval/images/") for p in before) and "data/plots/loss.png" in before
    pushed = dvc(project, "push")
    assert "pushed" in pushed.stdout + pushed.stderr

    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "data")
    dvc(project, "pull")
    assert _output_digests(project) == before
    assert dvc_json(project, "status") == {}


@pytest.mark.slow
def test_exp_run_with_a_changed_setting_then_metrics_diff(pipeline):
    project, _ = pipeline
    base_metrics = (project / "data" / "eval" / "metrics.json").read_text()
    run = dvc(project, "exp", "run", "-S", f"params/distill.yaml:lr={EXPERIMENT_LR}")
    assert "Running stage 'distill'" in run.stdout and "Running stage 'prepare'" not in run.stdout
    assert yaml.safe_load((project / "params" / "distill.yaml").read_text())["lr"] == EXPERIMENT_LR
    assert (project / "data" / "eval" / "metrics.json").read_text() != base_metrics

    diff = dvc_json(project, "metrics", "diff")["data/eval/metrics.json"]
    assert diff["models.erased.unet_sha256"]["old"] != diff["models.erased.unet_sha256"]["new"]
    assert any(d.get("diff") for d in diff.values()), diff  # at least one number moved
    assert "models.base.unet_sha256" not in diff  # the base model is the same in both runs

    experiments = dvc_json(project, "exp", "show")
    lrs = [rev["data"]["params"]["params/distill.yaml"]["data"]["lr"]
           for row in experiments for exp in (row.get("experiments") or []) for rev in exp.get("revs", [])]
    assert EXPERIMENT_LR in lrs, experiments


@pytest.mark.slow
def test_repro_erases_the_active_sets_base_model_a_tiny_sd3(tmp_path):
    """The stages take the base model from the active concept set: here a tiny SD3 folder (issue 32)."""
    from tiny_models import save_tiny_pipeline

    project = _copy_project(tmp_path / "project")
    _write_yaml(project / "params" / "distill.yaml", {**TINY_DISTILL, "train_method": "context"})
    base = save_tiny_pipeline("sd3", tmp_path / "sd3")
    concepts = yaml.safe_load((project / "params" / "concepts.yaml").read_text())
    concepts["sets"]["tiny-sd3"] = {"base_model": str(base), "concepts": ["red"]}
    concepts["active"] = "tiny-sd3"
    (project / "params" / "concepts.yaml").write_text(yaml.safe_dump(concepts, sort_keys=False))
    git(project, "init", "-q", "-b", "main")
    dvc(project, "repro", "distill")
    manifest = json.loads((project / "data" / "erased" / "manifest.json").read_text())
    assert manifest["base_model"]["pipeline_class"] == "StableDiffusion3Pipeline"
    assert manifest["base_model"]["model"] == str(base)
    assert manifest["trained_parameters"]["components"] == {"transformer": manifest["trained_parameters"]["numel"]}
