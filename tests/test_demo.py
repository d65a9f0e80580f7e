"""The README's main job, ``python -m flows.demo``, end to end, and what a user does next (issue 5).

In a fresh project folder (a git checkout holding only ``params/``) the demo erases the active
concept set through the Prefect flow and registers the result; the test then checks the version's
tags, promotes it with ``sdd promote``, loads ``models:/<name>@production`` through MLflow's pyfunc
and judges the images it generates for the evaluation's own prompts: the concept must be erased
there just as ``sdd evaluate`` measured on the run folder. Last, the toy base evaluated against
itself on the same prompts fails the safety gate while the quality gate stays green.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import sdd_command

from sdd import registry
from sdd.config import load_eval_config
from sdd.evaluation import ToyConceptJudge
from sdd.prompts import load_prompts
from sdd.provenance import file_md5

REPO = Path(__file__).resolve().parents[1]
DEMO_TIMEOUT_S = 1500


def git(project: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=project, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """Run the demo once in a new git project; return its output, the project and the tracking URI."""
    project = tmp_path_factory.mktemp("demo-project")
    shutil.copytree(REPO / "params", project / "params")
    git(project, "init", "-q")
    git(project, "add", "params")
    git(project, "-c", "user.name=sdd", "-c", "user.email=sdd@example.com", "commit", "-qm", "params")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(project / ".prefect"), TQDM_DISABLE="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    result = subprocess.run([sys.executable, "-m", "flows.demo"], cwd=project, env=env, capture_output=True,
                            text=True, timeout=DEMO_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"stdout": result.stdout, "project": project,
            "tracking_uri": f"sqlite:///{project / '.sdd' / 'mlflow.db'}"}


@pytest.fixture(scope="module")
def registered(demo) -> dict:
    match = re.search(r"registered (\S+) version (\d+) \(alias: (\S+)\)", demo["stdout"])
    assert match, demo["stdout"][-3000:]
    name, version, alias = match.group(1), int(match.group(2)), match.group(3)
    run_dir = Path(re.search(r"report: (\S+)", demo["stdout"]).group(1))
    return {"name": name, "version": version, "alias": alias, "run_dir": demo["project"] / run_dir}


def demo_metrics(registered) -> dict:
    [metrics_file] = registered["run_dir"].glob("eval-*/metrics.json")
    return json.loads(metrics_file.read_text())


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT_S + 600)
def test_demo_registers_the_erasure_with_its_provenance_and_robustness(demo, registered):
    """Safety and quality gates pass; the red team ran; the verdict of production's threat model (api)
    decides the candidate alias, and the version may not go public (open-weights) unless that passed."""
    metrics = demo_metrics(registered)
    assert f"verdict: {metrics['verdict']}" in demo["stdout"], demo["stdout"][-3000:]
    checks = {(c["gate"], c["concept"]): c for c in metrics["gates"]["checks"]}
    assert checks[("max_erased_rate", "red")]["status"] == "pass"
    assert checks[("min_relative_reduction", "red")]["status"] == "pass"
    assert checks[("max_quality_drop_points", None)]["status"] == "pass"
    robustness = [c for c in metrics["gates"]["checks"] if c["gate"].startswith(("max_attack_success", "max_union"))]
    assert {c["gate"] for c in robustness} == {"max_attack_success.transfer", "max_attack_success.adversarial_tokens",
                                               "max_attack_success.concept_inversion",
                                               "max_attack_success.relearning", "max_union_success"}
    assert all(c["status"] in ("pass", "fail") for c in robustness)  # measured, on the 138 effective prompts
    redteam = metrics["redteam"]
    assert redteam["concepts"]["red"]["effective_prompts"] > 100
    assert "## Robustness (red team)" in next(registered["run_dir"].glob("eval-*/report.md")).read_text()

    # The demo erases as the deployments do (params/distill.yaml) and says how long each stage took.
    manifest = json.loads((registered["run_dir"] / "erasure" / "manifest.json").read_text())
    distill = yaml.safe_load((REPO / "params" / "distill.yaml").read_text())
    assert {k: manifest["config"][k] for k in distill} == distill
    assert re.search(r"wall time: prepare-prompts \d+ s, distill \d+ s, .*redteam \d+ s", demo["stdout"])

    # production ships behind an API (params/registry.yaml): the demo's erasure holds up against the text
    # attacks, so it is the candidate, whatever an attacker holding the weights can do.
    threat = {name: t["verdict"] for name, t in redteam["threat_models"].items()}
    assert threat["api"] == "pass", redteam["threat_models"]
    assert registered["alias"] == "candidate"
    [row] = [r for r in registry.list_versions(registered["name"], tracking_uri=demo["tracking_uri"])
             if r.version == registered["version"]]
    assert row.aliases == ["candidate"] and row.concepts == "red"
    assert row.gates == ("passed" if metrics["verdict"] == "pass" else "failed")
    assert row.tags["eval_gates"] == "passed" and row.tags["robustness"] == redteam["verdict"]
    assert "may hold 'candidate' (threat model api): yes" in demo["stdout"]
    assert "may hold 'production' (threat model api): yes" in demo["stdout"]
    public = "yes" if threat["open-weights"] == "pass" else "no, did not pass its gates for threat model 'open-weights'"
    assert f"may hold 'public' (threat model open-weights): {public}" in demo["stdout"]
    assert row.tags["attack_success"].startswith("red=")
    # a verdict per threat model (params/gates.yaml): in the evaluation, the demo's output and the version's tags
    for name, threat in redteam["threat_models"].items():
        assert threat["verdict"] in ("pass", "fail") and row.tags[f"threat_model.{name}"] == threat["verdict"]
        assert f"threat model {name} ({', '.join(threat['attacks'])}): {threat['verdict']}" in demo["stdout"]
    assert set(redteam["threat_models"]) == {"api", "open-weights"}
    # what the open-weights attacks cost, erased vs base, at the budgets of params/redteam.yaml, with a plot
    budgets = yaml.safe_load((REPO / "params" / "redteam.yaml").read_text())["cost_curves"]
    budgets = {"concept_inversion": budgets["inversion_steps"], "relearning": budgets["relearning_steps"]}
    curves = redteam["concepts"]["red"]["cost_curves"]
    for attack in ("concept_inversion", "relearning"):
        assert curves[attack]["budgets"] == budgets[attack]
        for model in ("erased", "base"):
            assert set(curves[attack][model]) == {str(b) for b in budgets[attack]}
            assert f"cost curve red {attack} ({model}): {budgets[attack][0]} steps" in demo["stdout"]
    plot = registered["run_dir"] / next(registered["run_dir"].glob("eval-*")).name / redteam["dir"] / \
        redteam["cost_curve_plots"]["red"]
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert row.tags["base_model"] == "toy" and len(row.tags["concepts_sha256"]) == 64
    assert row.tags["git_commit"] == git(demo["project"], "rev-parse", "HEAD")
    assert row.tags["dvc_concepts"] == file_md5(demo["project"] / "params" / "concepts.yaml")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_promoted_demo_model_generates_with_the_concept_erased(demo, registered):
    name, version, uri = registered["name"], registered["version"], demo["tracking_uri"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    promote = sdd_command("promote", name, str(version), "--tracking-uri", uri)
    if (demo_metrics(registered)["redteam"]["threat_models"]["open-weights"]["verdict"]) != "pass":
        # public releases the weights: refused for a version that inversion or fine-tuning brings back
        public = subprocess.run([*promote, "--alias", "public"], cwd=demo["project"], env=env, capture_output=True,
                                text=True, timeout=300)
        assert public.returncode == 2 and public.stderr.startswith("error:"), public.stderr[-3000:]
        assert "threat model 'open-weights'" in public.stderr and len(public.stderr.strip().splitlines()) == 1
    promoted = subprocess.run(promote, cwd=demo["project"], env=env, capture_output=True, text=True, timeout=300)
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    [row] = [r for r in registry.list_versions(name, tracking_uri=uri) if r.version == version]
    assert "production" in row.aliases

    # The evaluation's own prompts for the erased concept, with its seeds and sampler settings.
    run_dir = registered["run_dir"]
    prompts = load_prompts(run_dir / "prompts")
    rows = [prompts.rows[i] for i in prompts.indices_for("red")]
    settings = load_eval_config(demo["project"] / "params" / "eval.yaml")
    model = registry.load_model(name, "production", tracking_uri=uri)
    out = model.predict(pd.DataFrame({"prompt": [r.prompt for r in rows], "seed": [r.seed for r in rows]}),
                        params={"num_inference_steps": settings.num_inference_steps,
                                "guidance_scale": settings.guidance_scale})
    assert out["seed"].tolist() == [r.seed for r in rows]
    # Judged by the judge `sdd evaluate` uses.
    present = ToyConceptJudge.load(device="cpu").presence([registry.decode_image(b) for b in out["image"]], ["red"])
    red_rate = sum(present["red"]) / len(rows)

    [metrics_file] = run_dir.glob("eval-*/metrics.json")
    measured = json.loads(metrics_file.read_text())["concepts"]["red"]["erased"]["rate"]
    assert red_rate <= 0.05, f"{red_rate:.1%} of {len(rows)} images from {name}@production are judged red"
    # The registry's model is the one the gates judged: same prompts and seeds give the same verdicts
    # (up to a pixel rounded differently in the PNG).
    assert abs(red_rate - measured) <= 2 / len(rows), (red_rate, measured)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_base_model_against_itself_fails_the_safety_gate_with_quality_green(demo, registered, monkeypatch):
    """Issue 4's other half: ``sdd evaluate`` of the toy base as the "erased" model, on the demo's prompts."""
    from typer.testing import CliRunner

    from sdd.cli import app

    monkeypatch.chdir(demo["project"])
    run_dir = registered["run_dir"]
    [eval_dir] = run_dir.glob("eval-*")
    out = demo["project"] / "base-vs-base"
    result = CliRunner().invoke(app, ["evaluate", "--base", "toy", "--model", "toy", "--prompts",
                                      str(run_dir / "prompts"), "--out", str(out),
                                      "--base-images", str(eval_dir / "images" / "base")])  # reuse the demo's
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["verdict"] == "fail"
    checks = {(c["gate"], c.get("concept")): c["status"] for c in metrics["gates"]["checks"]}
    assert checks[("max_erased_rate", "red")] == "fail" and checks[("min_relative_reduction", "red")] == "fail"
    assert checks[("max_quality_drop_points", None)] == "pass"
    assert metrics["concepts"]["red"]["erased"]["rate"] == metrics["concepts"]["red"]["base"]["rate"] >= 0.9
