"""Evaluate an erased model against its base: generate, judge, measure, gate, report.

Both models draw every prompt of the same prompt set with the same seeds. Then:

* **erasure**: per concept, the presence rate on the prompts that evoke it, for the base and the
  erased model, with a 95 % Wilson interval, and the relative reduction (base - erased) / base;
* **quality** on the benign prompts (rows evoking no concept): with the toy judge, how often the
  image matches its prompt's colour and shape (and the drop in percentage points); FID between
  base and erased images (toy-judge features for the toy world, Inception or CLIP otherwise); CLIP
  score when a CLIP model is configured;
* **gates** (``params/gates.yaml``): thresholds on those numbers, a verdict and a reason per gate.

The measurements are :mod:`sdd.evaluation.metrics`', the gates :mod:`sdd.evaluation.gates`'; this
module puts them together. :func:`evaluate` writes ``metrics.json`` (stable keys), ``report.md``,
``judgements.jsonl`` (one line per image and concept) and a before/after grid per concept (see
:mod:`sdd.evaluation.report`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sdd.config import EvalConfig, GatesConfig
from sdd.evaluation.gates import apply_gates
from sdd.evaluation.generate import GenerationSettings, generate
from sdd.evaluation.judges import Judge, Judgement
from sdd.evaluation.metrics import concept_metrics, judge_concept, quality_metrics
from sdd.layout import JUDGEMENTS_FILE, ROLES, image_dirs
from sdd.prompts import PromptSet
from sdd.storage import atomic_path

SCHEMA_VERSION = 1


# --- the whole evaluation -----------------------------------------------------------------------


#: ``{concept: {role: Judgement}}``: each concept judged on the rows of ``indices_for(concept)``.
Judged = dict[str, dict[str, Judgement]]


def model_infos(base_pipe, erased_pipe, base_name: str | None, erased_name: str | None) -> dict[str, dict]:
    return {"base": model_info(base_pipe, base_name), "erased": model_info(erased_pipe, erased_name)}


def generate_both(base_pipe, erased_pipe, prompt_set: PromptSet, folders: dict[str, Path], cfg: EvalConfig,
                  models: dict[str, dict], *, progress: bool = False, desc: str = "generate",
                  log: Callable[[str], None] | None = None) -> dict[str, list[Path]]:
    """Every row drawn by both models into ``folders`` (resumable; see :func:`sdd.evaluation.generate`)."""
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

    The single-process path (:func:`measure`) and the sharded one (:func:`sdd.evaluation.finish`) both end
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
        from sdd.models import denoiser, unet_weights_hash

        info["unet_sha256"] = unet_weights_hash(denoiser(pipe))
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
    from sdd.evaluation.report import write_report

    metrics = metrics_document(models, prompt_set, judge, cfg, gates, measured)
    write_report(metrics, prompt_set, paths["base"], paths["erased"], out_dir, cfg.grid_images)
    return metrics
