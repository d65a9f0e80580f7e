"""What an evaluation measures: presence rates with Wilson intervals, and quality on benign prompts.

* **erasure**: per concept, the presence rate on the prompts that evoke it, for the base and the
  erased model, with a 95 % Wilson interval, and the relative reduction (base - erased) / base
  (:func:`concept_metrics`; :func:`rate` is also the red team's ASR);
* **quality** on the benign prompts (rows evoking no concept): with the toy judge, how often the
  image matches its prompt's colour and shape (and the drop in percentage points); FID between
  base and erased images (toy-judge features for the toy world, Inception or CLIP otherwise); CLIP
  score when a CLIP model is configured (:func:`quality_metrics`).

Images are judged in chunks of :data:`CHUNK`, so a large prompt set never sits in memory whole.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import binomtest

from sdd.config import EvalConfig
from sdd.evaluation.generate import load_images
from sdd.evaluation.judges import Judge, Judgement, default_device, load_clip, to_tensor
from sdd.prompts import PromptSet

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
        from sdd.evaluation.judges import ClipImageFeatures

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

