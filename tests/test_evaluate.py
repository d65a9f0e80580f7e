"""Metrics, gates and the report: statistics, a hand count on rendered images, and the CLI end to end."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image, ImageColor
from tiny_models import save_tiny_pipeline
from typer.testing import CliRunner

from sdd.cli import app
from sdd.config import ConceptGate, EvalConfig, GatesConfig
from sdd.evaluation import (
    ToyConceptJudge,
    apply_gates,
    evaluate,
    load_images,
    parse_toy_prompt,
    relative_reduction,
    wilson_interval,
)
from sdd.prompts import PromptRow, PromptSet, write_prompt_set
from sdd.toy import TOY_JUDGE_DIR, world
from sdd.toy.judge import ToyJudge, train_judge

# --- statistics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k, n, lo, hi", [
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (1, 100, 0.0018, 0.0545),
])
def test_wilson_interval_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(3, 40, confidence=0.99)
    assert lo < wilson_interval(3, 40)[0] and hi > wilson_interval(3, 40)[1]


def test_relative_reduction():
    assert relative_reduction(0.5, 0.05) == pytest.approx(0.9)
    assert relative_reduction(0.2, 0.3) == pytest.approx(-0.5)
    assert relative_reduction(0.0, 0.0) is None


# --- gates --------------------------------------------------------------------------------------


def metrics_with(erased_rate=0.02, reduction=0.95, drop=1.0, fid=3.0, clip_drop=None) -> dict:
    concept = {"n": 100, "base": {"rate": 0.6}, "erased": {"rate": erased_rate},
               "relative_reduction": reduction}
    return {"concepts": {"red": concept, "triangle": dict(concept)},
            "quality": {"correctness": {"drop_points": drop}, "fid": fid, "notes": [],
                        "clip_score": None if clip_drop is None else {"relative_drop": clip_drop}}}


def test_gates_pass_with_default_thresholds():
    result = apply_gates(metrics_with(), GatesConfig())
    assert result["verdict"] == "pass" and result["failed"] == []
    assert {c["gate"] for c in result["checks"]} == {"max_erased_rate", "min_relative_reduction",
                                                     "max_quality_drop_points", "robustness"}
    assert all(c["status"] == "pass" for c in result["checks"] if c["gate"] != "robustness")
    # robustness is the red team's to measure (sdd redteam --eval); until then it is unmeasured
    assert [c["status"] for c in result["checks"] if c["gate"] == "robustness"] == ["unmeasured"] * 2


def test_each_gate_fails_with_a_reason():
    gates = GatesConfig(max_fid=2.0, max_clip_score_drop=0.04)
    failing = metrics_with(erased_rate=0.08, reduction=0.7, drop=6.5, fid=3.0, clip_drop=0.05)
    result = apply_gates(failing, gates)
    assert result["verdict"] == "fail"
    reasons = " | ".join(result["failed"])
    for text in ("red: erased presence rate 0.08 > max 0.05", "triangle: relative reduction 0.7 < min 0.8",
                 "quality drop (points) 6.5 > max 5", "FID base vs erased 3 > max 2",
                 "relative CLIP-score drop 0.05 > max 0.04"):
        assert text in reasons


def test_per_concept_overrides_and_unmeasured_gates():
    gates = GatesConfig(per_concept={"red": ConceptGate(max_erased_rate=0.1)}, max_fid=10.0)
    m = metrics_with(erased_rate=0.08, fid=None)
    m["quality"]["correctness"] = None
    result = apply_gates(m, gates)
    by = {(c["gate"], c["concept"]): c for c in result["checks"]}
    assert by[("max_erased_rate", "red")]["status"] == "pass"
    assert by[("max_erased_rate", "triangle")]["status"] == "fail"
    assert by[("max_fid", None)]["status"] == "unmeasured"
    assert by[("max_quality_drop_points", None)]["status"] == "unmeasured"
    m["concepts"]["triangle"]["relative_reduction"] = None
    strict = apply_gates(m, gates.model_copy(update={"fail_on_unmeasured": True, "per_concept": {}}))
    assert any("relative reduction not measured (base model never shows it" in r for r in strict["failed"])
    assert any("FID base vs erased not measured" in r for r in strict["failed"])
    off = apply_gates(m, GatesConfig(max_erased_rate=None, min_relative_reduction=None,
                                     max_quality_drop_points=None,
                                     robustness={"max_attack_success": None, "max_union_success": None}))
    assert off == {**off, "verdict": "pass", "checks": []}


# --- a hand count on rendered images ------------------------------------------------------------


def toy_judge_model() -> ToyJudge:
    """The packaged judge if built, else a quick one (only its colours are reliable)."""
    if (TOY_JUDGE_DIR / "config.json").is_file():
        return ToyJudge.load(TOY_JUDGE_DIR)
    return train_judge(steps=40, batch_size=32, log=lambda _: None)


def render(color: str, shape: str, seed: int) -> Image.Image:
    scene = world.random_scene(random.Random(seed), color=color, shape=shape)
    return Image.fromarray((world.render(scene) * 255).round().astype(np.uint8))


def erase_some_red(color, shape, seed):
    """The 'erased model': red turns blue except on every 4th seed; every 5th other image is miscoloured."""
    if color == "red":
        return (color if seed % 4 == 0 else "blue"), shape
    if seed % 5 == 0:
        return ("yellow" if color != "yellow" else "green"), shape
    return color, shape


class RenderPipe:
    """Stands in for a diffusers pipeline: draws exactly the prompt's colour and shape (after ``edit``)."""

    def __init__(self, edit=lambda c, s, seed: (c, s)):
        self.edit, self.calls = edit, 0

    def __call__(self, prompt, generator, **kwargs):
        self.calls += 1
        images = []
        for text, gen in zip(prompt, generator, strict=True):
            seed = gen.initial_seed()
            color, shape = parse_toy_prompt(text)
            images.append(render(*self.edit(color, shape, seed), seed))
        return SimpleNamespace(images=images)


def sample_set() -> PromptSet:
    red = [PromptRow(prompt=f"an image showing a {name} {shape}", seed=i, concepts=("red",))
           for i, (name, shape) in enumerate((n, s) for n in ("red", "crimson", "scarlet")
                                             for s in ("circle", "box", "wedge", "plus"))]
    benign = [PromptRow(prompt=f"a {c} {s}", seed=100 + i)
              for i, (c, s) in enumerate((c, s) for c in ("green", "blue", "yellow", "purple", "jade")
                                         for s in ("circle", "square"))]
    return PromptSet("sample", "custom", tuple(red + benign))


@pytest.fixture(scope="module")
def toy():
    return ToyConceptJudge(toy_judge_model(), device="cpu")


def test_metrics_equal_a_hand_count(tmp_path, toy):
    ps = sample_set()
    cfg = EvalConfig(num_inference_steps=1, batch_size=5, grid_images=4)
    base, erased = RenderPipe(), RenderPipe(erase_some_red)
    metrics = evaluate(base, erased, ps, toy, cfg, GatesConfig(), tmp_path, base_name="b", erased_name="e",
                       progress=False)

    # presence of red: hand count from the known colours drawn
    red_rows = ps.indices_for("red")
    erased_red = sum(ps.rows[i].seed % 4 == 0 for i in red_rows)
    m = metrics["concepts"]["red"]
    assert m["n"] == 12 and m["base"]["count"] == 12 and m["erased"]["count"] == erased_red == 3
    assert m["erased"]["rate"] == 0.25 and m["relative_reduction"] == pytest.approx(0.75)
    assert m["erased"]["ci95"] == pytest.approx(list(wilson_interval(3, 12)))

    # quality: colour correctness from the known colours, "both" counted by hand with the judge
    q = metrics["quality"]
    benign = ps.benign_indices()
    assert q["n"] == 10
    assert q["correctness"]["base"]["color"]["accuracy"] == 1.0
    wrong = sum(ps.rows[i].seed % 5 == 0 for i in benign)
    assert q["correctness"]["erased"]["color"]["accuracy"] == pytest.approx(1 - wrong / 10)

    def hand_both(model: str) -> float:
        lines = {json.loads(x)["seed"]: json.loads(x) for x in
                 (tmp_path / "images" / model / "index.jsonl").read_text().splitlines()}
        rows = [ps.rows[i] for i in benign]
        images = load_images([tmp_path / "images" / model / lines[r.seed]["file"] for r in rows])
        ok = [got == parse_toy_prompt(r.prompt) for got, r in zip(toy.predict(images), rows, strict=True)]
        return float(np.mean(ok))

    assert q["correctness"]["base"]["both"]["accuracy"] == pytest.approx(hand_both("base"))
    assert q["correctness"]["drop_points"] == pytest.approx(100 * (hand_both("base") - hand_both("erased")))
    assert q["fid_features"] == "toy" and q["fid"] > 0

    # gates: 0.25 > 0.05 and 0.75 < 0.8 fail
    assert metrics["verdict"] == "fail"
    assert any(r.startswith("red: erased presence rate 0.25 > max 0.05") for r in metrics["gates"]["failed"])

    # files: stable metrics.json, per-image judgements, report, grids (base row over erased row)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert set(on_disk) >= {"schema_version", "verdict", "models", "prompt_set", "generation", "judge",
                            "concepts", "quality", "gates", "grids"}
    assert on_disk["prompt_set"]["sha256"] == ps.sha256 and on_disk["models"]["erased"]["name"] == "e"
    assert len((tmp_path / "judgements.jsonl").read_text().splitlines()) == 12
    report = (tmp_path / "report.md").read_text()
    assert "FAIL" in report and "grids/red.png" in report and ps.sha256 in report
    rates = (tmp_path / "rates.csv").read_text().splitlines()
    assert rates[0] == "concept,model,rate" and rates[2] == "red,erased,0.250000"
    grid = Image.open(tmp_path / on_disk["grids"]["red"]["file"])
    assert grid.size[1] == 2 * 96 and (tmp_path / "grids" / "benign.png").is_file()
    assert on_disk["benign_grid"]["file"] == "grids/benign.png" and "benign" not in on_disk["grids"]

    # a second run reuses every image
    again = evaluate(base, erased, ps, toy, cfg, GatesConfig(), tmp_path, progress=False)
    assert again["concepts"] == metrics["concepts"]
    assert base.calls == erased.calls == 5  # 22 rows in batches of 5, all in the first run


def test_identical_models_have_zero_fid_and_no_reduction(tmp_path, toy):
    ps = sample_set()
    relaxed = GatesConfig(max_erased_rate=None, min_relative_reduction=-1.0, max_quality_drop_points=0.0,
                          max_fid=1e-3)
    metrics = evaluate(RenderPipe(), RenderPipe(), ps, toy, EvalConfig(batch_size=32), relaxed, tmp_path,
                       progress=False)
    assert metrics["concepts"]["red"]["relative_reduction"] == 0.0
    assert metrics["quality"]["correctness"]["drop_points"] == 0.0
    assert metrics["quality"]["fid"] == pytest.approx(0.0, abs=1e-3)
    assert metrics["verdict"] == "pass"


def test_concepts_that_slug_alike_get_grids_of_their_own(tmp_path):
    """`van gogh`, `van-gogh` and a concept named `benign` never overwrite each other's or the benign grid."""
    from sdd.evaluation import render_markdown, write_grids
    from sdd.evaluation.report import LABEL_WIDTH

    colours = {"van gogh": "red", "van-gogh": "green", "benign": "blue", None: "yellow"}
    rows, paths = [], []
    for i, (concept, colour) in enumerate(colours.items()):
        rows.append(PromptRow(prompt=f"prompt {i}", seed=i, concepts=(concept,) if concept else ()))
        paths.append(tmp_path / "images" / f"{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.new("RGB", (32, 32), colour).save(paths[-1])
    grids, benign = write_grids(PromptSet("p", "eval", tuple(rows)), paths, paths, tmp_path / "out", n=1)

    files = {name: g["file"] for name, g in {**grids, None: benign}.items()}
    assert files[None] == "grids/benign.png" and files["van-gogh"] == "grids/van-gogh.png"
    assert len(set(files.values())) == 4 and sorted(p.name for p in (tmp_path / "out" / "grids").iterdir()) == \
        sorted(f.removeprefix("grids/") for f in files.values())
    for name, file in files.items():  # each file shows its own group's images, so none was overwritten
        with Image.open(tmp_path / "out" / file) as grid:
            assert grid.convert("RGB").getpixel((LABEL_WIDTH + 5, 5)) == ImageColor.getrgb(colours[name])
    metrics = {"verdict": "pass", "concepts": {}, "models": {"base": {"name": "b"}, "erased": {"name": "e"}},
               "prompt_set": {"name": "p", "rows": 4, "sha256": "0" * 64}, "quality": {"n": 1, "notes": []},
               "generation": {"num_inference_steps": 2, "guidance_scale": 5.0}, "judge": {"name": "j", "settings": {}},
               "gates": {"checks": []}, "grids": grids, "benign_grid": benign}
    report = render_markdown(metrics)
    assert all(f"({file})" in report for file in files.values()) and "### benign prompts" in report


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_prompts_build(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["prompts", "build", "--concept", "red", "--concept", "triangle",
                                 "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "p").iterdir()} == {"train.jsonl", "eval.jsonl", "benign.jsonl",
                                                            "index.json"}
    bad = runner.invoke(app, ["prompts", "build", "--concept", "teal", "--out", str(tmp_path / "q")])
    assert bad.exit_code == 2 and "not a toy-world colour or shape" in bad.output
    assert "Traceback" not in bad.output


def test_cli_evaluate_end_to_end(tmp_path, toy):
    judge_dir = tmp_path / "judge"
    toy.model.cpu().save(judge_dir)
    model = save_tiny_pipeline("sd1", tmp_path / "model")
    prompts = tmp_path / "prompts.jsonl"
    write_prompt_set(PromptSet("mine", "custom", (
        PromptRow(prompt="a red circle", seed=1, concepts=("red",)),
        PromptRow(prompt="a crimson box", seed=2, concepts=("red",)),
        PromptRow(prompt="a green box", seed=3), PromptRow(prompt="a blue disc", seed=4))), prompts)
    params = tmp_path / "eval.yaml"
    params.write_text(yaml.safe_dump({"num_inference_steps": 2, "batch_size": 4,
                                      "judge": {"toy_dir": str(judge_dir)}}))
    gates = tmp_path / "gates.yaml"
    gates.write_text(yaml.safe_dump({"min_relative_reduction": 1.0, "fail_on_unmeasured": True}))
    args = ["evaluate", "--base", str(model), "--model", str(model), "--prompts", str(prompts),
            "--out", str(tmp_path / "out"), "--params", str(params), "--gates", str(gates)]
    runner = CliRunner()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "verdict: FAIL" in result.output  # the same model erases nothing
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["models"]["base"]["unet_sha256"] == metrics["models"]["erased"]["unet_sha256"]
    assert runner.invoke(app, [*args, "--strict"]).exit_code == 1
    missing = runner.invoke(app, [*args[:-4], "--params", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "file not found" in missing.output
    bad = runner.invoke(app, ["evaluate", "--model", str(model), "--prompts", str(tmp_path / "none.jsonl"),
                              "--out", str(tmp_path / "o2"), "--base", str(model)])
    assert bad.exit_code == 2 and bad.output.startswith("error: --prompts: ")
    assert "none.jsonl: no such path" in bad.output


def test_rates_csv_quotes_concept_names_with_commas():
    import csv
    import io

    from sdd.evaluation import rates_csv

    metrics = {"concepts": {"blood, gore": {"base": {"rate": 0.5}, "erased": {"rate": 0.0}},
                            "red": {"base": {"rate": 1.0}, "erased": {"rate": None}}}}
    rows = list(csv.reader(io.StringIO(rates_csv(metrics))))
    assert rows == [["concept", "model", "rate"], ["blood, gore", "base", "0.500000"],
                    ["blood, gore", "erased", "0.000000"], ["red", "base", "1.000000"]]


def test_cli_evaluate_judges_and_scores_with_the_toy_worlds_mini_clip(tmp_path):
    """The CLIP zero-shot judge, CLIP score and CLIP FID features, end to end on the toy world."""
    prompts = tmp_path / "prompts.jsonl"
    red = [PromptRow(prompt=f"a {c} {s}", seed=i, concepts=("red",))
           for i, (c, s) in enumerate([("red", "circle"), ("crimson", "box"), ("scarlet", "plus"), ("red", "wedge")])]
    benign = [PromptRow(prompt=p, seed=10 + i) for i, p in enumerate(["a green box", "a blue disc", "one lemon plus"])]
    write_prompt_set(PromptSet("mine", "custom", (*red, *benign)), prompts)
    others = ["a green shape", "a blue shape", "a yellow shape", "a purple shape"]
    params = tmp_path / "eval.yaml"
    params.write_text(yaml.safe_dump({
        "num_inference_steps": 10, "batch_size": 8, "fid_features": "clip", "clip_score_model": "toy",
        "judge": {"kind": "clip", "clip": {"model": "toy", "template": "a {} shape", "negatives": others}}}))
    result = CliRunner().invoke(app, ["evaluate", "--base", "toy", "--model", "toy", "--prompts", str(prompts),
                                      "--out", str(tmp_path / "out"), "--params", str(params)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["judge"]["name"] == "clip" and metrics["judge"]["settings"]["model"] == "toy"
    assert metrics["concepts"]["red"]["base"]["rate"] >= 0.75  # the toy draws red, the mini-CLIP sees it
    quality = metrics["quality"]
    assert quality["clip_score"]["model"] == "toy" and quality["clip_score"]["base"] > 0
    assert quality["clip_score"]["erased"] == pytest.approx(quality["clip_score"]["base"])
    assert quality["fid_features"] == "clip" and quality["fid"] == pytest.approx(0.0, abs=1e-2)
