"""Evaluate an erased model against its base: generate, judge, measure, gate, report.

Both models draw every prompt of the same prompt set with the same seeds. Then:

* **erasure**: per concept, the presence rate on the prompts that evoke it, for the base and the
  erased model, with a 95 % Wilson interval, and the relative reduction (base - erased) / base;
* **quality** on the benign prompts (rows evoking no concept): with the toy judge, how often the
  image matches its prompt's colour and shape (and the drop in percentage points); FID between
  base and erased images (toy-judge features for the toy world, Inception or CLIP otherwise); CLIP
  score when a CLIP model is configured;
* **gates** (``params/gates.yaml``): thresholds on those numbers, a verdict and a reason per gate.

:func:`evaluate` writes ``metrics.json`` (stable keys), ``report.md``, ``judgements.jsonl`` (one
line per image and concept) and a before/after grid per concept (see :mod:`sdd.report`).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import binomtest

from sdd.config import EvalConfig, GatesConfig
from sdd.generate import GenerationSettings, generate, load_images
from sdd.judges import Judge, Judgement, default_device, load_clip, to_tensor
from sdd.layout import JUDGEMENTS_FILE, ROLES, image_dirs
from sdd.prompts import PromptSet
from sdd.storage import atomic_path

SCHEMA_VERSION = 1
CHUNK = 64  # images held in memory at once while judging


# --- statistics ---------------------------------------------------------------------------------


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials ((0, 1) when n == 0)."""
    if n == 0:
        return 0.0, 1.0
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def rate(flags: Sequence[bool]) -> dict[str, Any]:
    k, n = int(sum(bool(f) for f in flags)), len(flags)
    return {"count": k, "n": n, "rate": k / n if n else None, "ci95": list(wilson_interval(k, n))}


def relative_reduction(base_rate: float | None, erased_rate: float | None) -> float | None:
    """(base - erased) / base; None when the base model never shows the concept."""
    if not base_rate or erased_rate is None:
        return None
    return (base_rate - erased_rate) / base_rate


def concept_metrics(base: Sequence[bool], erased: Sequence[bool]) -> dict[str, Any]:
    b, e = rate(base), rate(erased)
    return {"n": len(base), "base": b, "erased": e,
            "relative_reduction": relative_reduction(b["rate"], e["rate"])}


# --- judging generated images in chunks ---------------------------------------------------------


def _chunks(paths: Sequence[Path], size: int = CHUNK) -> Iterator[tuple[int, list]]:
    for i in range(0, len(paths), size):
        yield i, load_images(paths[i:i + size])


def judge_concept(judge: Judge, paths: Sequence[Path], concept: str) -> Judgement:
    present, score = [], []
    for _, images in _chunks(paths):
        j = judge.judge(images, [concept])[concept]
        present += j.present
        score += j.score
    return Judgement(present, score)


def correctness_metrics(judged: list[dict[str, bool | None]]) -> dict[str, Any]:
    """Fractions of images whose colour / shape / both match the prompt (toy judge)."""
    def frac(values):
        values = [v for v in values if v is not None]
        return {"accuracy": float(np.mean(values)) if values else None, "n": len(values)}

    both = [None if j["color"] is None or j["shape"] is None else j["color"] and j["shape"] for j in judged]
    return {"color": frac(j["color"] for j in judged), "shape": frac(j["shape"] for j in judged),
            "both": frac(both)}


def _fid_module(cfg: EvalConfig, judge: Judge) -> tuple[str, torch.nn.Module | None, str | None]:
    """(feature name, extractor or None for Inception, reason if FID cannot be measured)."""
    kind = cfg.fid_features
    if kind == "auto":
        if hasattr(judge, "feature_extractor"):
            kind = "toy"
        elif importlib.util.find_spec("torch_fidelity"):
            kind = "inception"
        elif cfg.clip_score_model:
            kind = "clip"
        else:
            return "none", None, "no FID features: install torch-fidelity or configure clip_score_model"
    if kind == "none":
        return "none", None, "FID disabled (fid_features: none)"
    if kind == "toy":
        if not hasattr(judge, "feature_extractor"):
            return kind, None, "fid_features: toy needs the toy judge"
        return kind, judge.feature_extractor(), None
    if kind == "clip":
        if not cfg.clip_score_model:
            return kind, None, "fid_features: clip needs clip_score_model"
        from sdd.judges import ClipImageFeatures

        return kind, ClipImageFeatures(*load_clip(cfg.clip_score_model)), None
    if not importlib.util.find_spec("torch_fidelity"):
        return kind, None, "fid_features: inception needs torch-fidelity installed"
    return kind, None, None


def quality_metrics(prompt_set: PromptSet, base_paths: Sequence[Path], erased_paths: Sequence[Path],
                    judge: Judge, cfg: EvalConfig) -> dict[str, Any]:
    """Correctness, FID and CLIP score on the benign rows, streaming the images in chunks."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.multimodal.clip_score import CLIPScore

    idx = prompt_set.benign_indices()
    prompts = [prompt_set.rows[i].prompt for i in idx]
    out: dict[str, Any] = {"n": len(idx), "notes": []}
    if not idx:
        out["notes"].append("no benign prompts: quality not measured")
        return {**out, "correctness": None, "fid": None, "fid_features": None, "clip_score": None}

    device = default_device()
    has_correctness = hasattr(judge, "correctness")
    fid_name, fid_net, fid_reason = _fid_module(cfg, judge)
    if fid_reason is None and len(idx) < 2:
        fid_reason = "FID needs at least 2 benign images"
    fid = None
    if fid_reason is None and fid_net is not None:
        fid = FrechetInceptionDistance(feature=fid_net, normalize=True).to(device)
    elif fid_reason is None:
        try:  # Inception weights are downloaded unless cfg.inception_weights points at a local copy
            fid = FrechetInceptionDistance(feature=2048, normalize=True,
                                           feature_extractor_weights_path=cfg.inception_weights).to(device)
        except Exception as e:  # offline or bad weights: report, do not crash the evaluation
            fid_reason = f"Inception FID unavailable ({type(e).__name__}); set inception_weights"
    clip = {}
    if cfg.clip_score_model:
        clip_model = load_clip(cfg.clip_score_model)  # one copy, shared by both metrics
        clip = {m: CLIPScore(model_name_or_path=lambda: clip_model) for m in ("base", "erased")}

    judged: dict[str, list] = {"base": [], "erased": []}
    for model, paths in (("base", base_paths), ("erased", erased_paths)):
        for start, images in _chunks([paths[i] for i in idx]):
            batch_prompts = prompts[start:start + len(images)]
            if has_correctness:
                judged[model] += judge.correctness(images, batch_prompts)
            if fid is not None or clip:
                x = to_tensor(images).to(device)
                if fid is not None:
                    fid.update(x, real=model == "base")
                if clip:
                    clip[model].update(list((x * 255).round().to(torch.uint8)), batch_prompts)

    correctness = None
    if has_correctness:
        b, e = correctness_metrics(judged["base"]), correctness_metrics(judged["erased"])
        drop = (100 * (b["both"]["accuracy"] - e["both"]["accuracy"])
                if b["both"]["accuracy"] is not None and e["both"]["accuracy"] is not None else None)
        correctness = {"base": b, "erased": e, "drop_points": drop}
    else:
        out["notes"].append(f"the {judge.name} judge does not judge prompt correctness")
    if fid_reason:
        out["notes"].append(fid_reason)
    clip_score = None
    if clip:
        cb, ce = float(clip["base"].compute()), float(clip["erased"].compute())
        clip_score = {"model": cfg.clip_score_model, "base": cb, "erased": ce,
                      "relative_drop": (cb - ce) / cb if cb else None}
    # FID is >= 0; a tiny negative value is round-off in the matrix square root (identical sets).
    fid_value = max(0.0, float(fid.compute())) if fid is not None else None
    return {**out, "correctness": correctness, "fid": fid_value,
            "fid_features": fid_name if fid is not None else None, "clip_score": clip_score}


# --- gates --------------------------------------------------------------------------------------


def _check(gate: str, concept: str | None, value: float | None, threshold: float, bound: str,
           what: str, why_unmeasured: str, fail_on_unmeasured: bool) -> dict[str, Any]:
    label = f"{concept}: {what}" if concept else what
    if value is None:
        status = "fail" if fail_on_unmeasured else "unmeasured"
        reason = f"{label} not measured ({why_unmeasured})"
    else:
        ok = value <= threshold if bound == "max" else value >= threshold
        status = "pass" if ok else "fail"
        op = ("<=" if ok else ">") if bound == "max" else (">=" if ok else "<")
        reason = f"{label} {value:.4g} {op} {bound} {threshold:.4g}"
    return {"gate": gate, "concept": concept, "value": value, "threshold": threshold, "bound": bound,
            "status": status, "reason": reason}


def robustness_placeholders(concepts: list[str], gates: GatesConfig) -> list[dict[str, Any]]:
    """One ``robustness`` check per concept, not yet measured: ``sdd redteam --eval`` replaces them.

    So an evaluation never passes on robustness it did not measure when ``fail_on_unmeasured`` (of
    the robustness gates) is set, and says what is missing when it is not.
    """
    robust = gates.robustness
    if robust.max_attack_success is None and robust.max_union_success is None and \
            not any(v is not None for v in robust.per_attack.values()):
        return []
    return [_check("robustness", concept, None, robust.max_union_success or robust.max_attack_success or 0.0,
                   "max", "attack success (red team)", "red team not run: `sdd redteam --eval <eval folder>`",
                   robust.fail_on_unmeasured) for concept in concepts]


def apply_gates(metrics: dict[str, Any], gates: GatesConfig) -> dict[str, Any]:
    """Compare ``metrics`` with the thresholds in ``gates``: a verdict and one check per gate."""
    strict = gates.fail_on_unmeasured
    checks = []
    for concept, m in metrics["concepts"].items():
        override = gates.per_concept.get(concept)
        max_rate, min_red = gates.max_erased_rate, gates.min_relative_reduction
        if override is not None and override.max_erased_rate is not None:
            max_rate = override.max_erased_rate
        if override is not None and override.min_relative_reduction is not None:
            min_red = override.min_relative_reduction
        if max_rate is not None:
            checks.append(_check("max_erased_rate", concept, m["erased"]["rate"], max_rate, "max",
                                 "erased presence rate", "no evaluation prompts", strict))
        if min_red is not None:
            checks.append(_check("min_relative_reduction", concept, m["relative_reduction"], min_red, "min",
                                 "relative reduction", f"base model never shows it (0/{m['n']})", strict))
    quality = metrics.get("quality") or {}
    if gates.max_quality_drop_points is not None:
        drop = (quality.get("correctness") or {}).get("drop_points")
        checks.append(_check("max_quality_drop_points", None, drop, gates.max_quality_drop_points, "max",
                             "quality drop (points)", "judge has no correctness or no benign prompts",
                             strict))
    if gates.max_fid is not None:
        checks.append(_check("max_fid", None, quality.get("fid"), gates.max_fid, "max", "FID base vs erased",
                             "; ".join(quality.get("notes", [])) or "not computed", strict))
    if gates.max_clip_score_drop is not None:
        drop = (quality.get("clip_score") or {}).get("relative_drop")
        checks.append(_check("max_clip_score_drop", None, drop, gates.max_clip_score_drop, "max",
                             "relative CLIP-score drop", "no clip_score_model configured", strict))
    checks += robustness_placeholders(list(metrics["concepts"]), gates)
    failed = [c["reason"] for c in checks if c["status"] == "fail"]
    return {"verdict": "fail" if failed else "pass", "failed": failed, "checks": checks,
            "settings": gates.model_dump(mode="json")}


# --- the whole evaluation -----------------------------------------------------------------------


#: ``{concept: {role: Judgement}}``: each concept judged on the rows of ``indices_for(concept)``.
Judged = dict[str, dict[str, Judgement]]


def model_infos(base_pipe, erased_pipe, base_name: str | None, erased_name: str | None) -> dict[str, dict]:
    return {"base": model_info(base_pipe, base_name), "erased": model_info(erased_pipe, erased_name)}


def generate_both(base_pipe, erased_pipe, prompt_set: PromptSet, folders: dict[str, Path], cfg: EvalConfig,
                  models: dict[str, dict], *, progress: bool = False, desc: str = "generate",
                  log: Callable[[str], None] | None = None) -> dict[str, list[Path]]:
    """Every row drawn by both models into ``folders`` (resumable; see :func:`sdd.generate.generate`)."""
    paths: dict[str, list[Path]] = {}
    for role, pipe in zip(ROLES, (base_pipe, erased_pipe), strict=True):
        settings = GenerationSettings(cfg.num_inference_steps, cfg.guidance_scale, cfg.height, cfg.width,
                                      model_id=models[role].get("unet_sha256"))
        paths[role] = generate(pipe, prompt_set, folders[role], settings, cfg.batch_size, progress=progress,
                               desc=f"{desc} ({role})", log=log) if prompt_set.rows else []
    return paths


def judge_all(judge: Judge, prompt_set: PromptSet, paths: dict[str, Sequence[Path]],
              concepts: Sequence[str] | None = None) -> Judged:
    """Each concept (default: the set's) judged on both models' images of the rows evoking it."""
    judged: Judged = {}
    for concept in concepts if concepts is not None else prompt_set.concepts():
        idx = prompt_set.indices_for(concept)
        judged[concept] = {role: judge_concept(judge, [paths[role][i] for i in idx], concept) for role in ROLES}
    return judged


def judgement_records(prompt_set: PromptSet, judged: Judged) -> list[dict[str, Any]]:
    """One ``judgements.jsonl`` record per (row, concept)."""
    records = []
    for concept, by_role in judged.items():
        for k, i in enumerate(prompt_set.indices_for(concept)):
            row = prompt_set.rows[i]
            records.append({"row": i, "concept": concept, "prompt": row.prompt, "seed": row.seed,
                            **{role: {"present": by_role[role].present[k], "score": by_role[role].score[k]}
                               for role in ROLES}})
    return records


def measure_judged(prompt_set: PromptSet, judged: Judged, paths: dict[str, Sequence[Path]], judge: Judge,
                   cfg: EvalConfig, judgements_file: Path | None = None) -> dict[str, Any]:
    """Erasure metrics from the judgements, quality metrics from the images: the one evaluation core.

    The single-process path (:func:`measure`) and the sharded one (:func:`sdd.shards.finish`) both end
    here, so their metrics agree by construction once their judgements and images do.
    """
    concepts = {c: concept_metrics(j["base"].present, j["erased"].present) for c, j in judged.items()}
    if judgements_file is not None:
        with atomic_path(judgements_file) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in judgement_records(prompt_set, judged)))
    quality = quality_metrics(prompt_set, paths["base"], paths["erased"], judge, cfg)
    return {"concepts": concepts, "quality": quality}


def measure(prompt_set: PromptSet, base_paths: Sequence[Path], erased_paths: Sequence[Path], judge: Judge,
            cfg: EvalConfig, judgements_file: Path | None = None) -> dict[str, Any]:
    """Erasure and quality metrics from already generated images (aligned with the set's rows)."""
    paths = {"base": base_paths, "erased": erased_paths}
    return measure_judged(prompt_set, judge_all(judge, prompt_set, paths), paths, judge, cfg, judgements_file)


def portable_path(value: Any) -> Any:
    """A path inside the working directory as a relative one, so metrics.json is the same in any clone."""
    if not isinstance(value, str) or not Path(value).is_absolute():
        return value
    try:
        return Path(value).relative_to(Path.cwd()).as_posix()
    except ValueError:
        return value


def model_info(pipe, name: str | None) -> dict[str, Any]:
    """What ``metrics.json`` records about a model (its name, source and UNet weights hash)."""
    source = getattr(pipe, "sdd_source", None)
    info: dict[str, Any] = {"name": name or (source.model if source else type(pipe).__name__)}
    if source is not None:
        info.update(asdict(source))
        info["path"] = portable_path(info["path"])
    if isinstance(getattr(pipe, "unet", None), torch.nn.Module):
        from sdd.models import unet_weights_hash

        info["unet_sha256"] = unet_weights_hash(pipe.unet)
    return info


def metrics_document(models: dict, prompt_set: PromptSet, judge: Judge, cfg: EvalConfig, gates: GatesConfig,
                     measured: dict[str, Any]) -> dict[str, Any]:
    """The metrics.json content: what was compared and how, the measurements, and the gate verdicts."""
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "models": models,
        "prompt_set": prompt_set.summary(),
        "generation": {"num_inference_steps": cfg.num_inference_steps, "guidance_scale": cfg.guidance_scale,
                       "height": cfg.height, "width": cfg.width,
                       "seeding": "one CPU torch.Generator per row"},
        "judge": {"name": judge.name, "settings": {k: portable_path(v) for k, v in judge.settings().items()}},
        **measured,
    }
    metrics["gates"] = apply_gates(metrics, gates)
    metrics["verdict"] = metrics["gates"]["verdict"]
    return metrics


def evaluate(base_pipe, erased_pipe, prompt_set: PromptSet, judge: Judge, cfg: EvalConfig,
             gates: GatesConfig, out_dir: Path, *, base_name: str | None = None,
             erased_name: str | None = None, base_images: Path | None = None,
             progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Generate with both models (resumable, under ``out_dir/images``), measure, gate and report.

    ``base_images`` shares the base model's images between evaluations (default
    ``out_dir/images/base``); they are reused only if made with the same model and settings.
    Returns the metrics dict that is also written to ``out_dir/metrics.json``.
    """
    out_dir = Path(out_dir)
    models = model_infos(base_pipe, erased_pipe, base_name, erased_name)
    paths = generate_both(base_pipe, erased_pipe, prompt_set, image_dirs(out_dir, base_images), cfg, models,
                          progress=progress, log=log)
    measured = measure(prompt_set, paths["base"], paths["erased"], judge, cfg, out_dir / JUDGEMENTS_FILE)
    return write_evaluation(out_dir, models, prompt_set, judge, cfg, gates, measured, paths)


def write_evaluation(out_dir: Path, models: dict, prompt_set: PromptSet, judge: Judge, cfg: EvalConfig,
                     gates: GatesConfig, measured: dict[str, Any], paths: dict[str, Sequence[Path]]) -> dict[str, Any]:
    """Gate the measurements and write ``metrics.json``, ``report.md``, ``rates.csv`` and the grids."""
    from sdd.report import write_report

    metrics = metrics_document(models, prompt_set, judge, cfg, gates, measured)
    write_report(metrics, prompt_set, paths["base"], paths["erased"], out_dir, cfg.grid_images)
    return metrics
