"""Stage 3, evaluation: how well a model is erased, and what it still draws well.

Both models draw every prompt of one prompt set with the same seeds; a judge says what each image
shows; the measurements are gated (``params/gates.yaml``) and reported.

* :mod:`sdd.evaluation.core`: :func:`evaluate` (``sdd evaluate``), the one evaluation core that the
  single-process path and the sharded one share;
* :mod:`sdd.evaluation.generate`: resumable, seeded image generation;
* :mod:`sdd.evaluation.judges`: the toy judge, NudeNet, a CLIP zero-shot judge;
* :mod:`sdd.evaluation.metrics`: presence rates with Wilson intervals, quality (correctness, FID, CLIP score);
* :mod:`sdd.evaluation.gates`: thresholds, checks and the verdict;
* :mod:`sdd.evaluation.report`: ``report.md``, ``rates.csv`` and the before/after grids;
* :mod:`sdd.evaluation.shards`: split a large prompt set, run each shard anywhere, merge.

``sdd plots`` (the loss curve and the rates as PNGs) is :mod:`sdd.plots`, outside this package: a
DVC stage that must not import torch, which every module here does.
"""

from sdd.evaluation.core import (
    Judged,
    evaluate,
    generate_both,
    judge_all,
    judgement_records,
    measure,
    measure_judged,
    metrics_document,
    model_info,
    model_infos,
    portable_path,
    write_evaluation,
)
from sdd.evaluation.gates import apply_gates, robustness_placeholders
from sdd.evaluation.generate import GenerationSettings, generate, image_key, load_images, read_index, row_guidance
from sdd.evaluation.judges import (
    BaseJudge,
    ClipImageFeatures,
    ClipJudge,
    Judge,
    Judgement,
    NudeNetJudge,
    ToyConceptJudge,
    build_judge,
    load_clip,
    parse_toy_prompt,
)
from sdd.evaluation.metrics import (
    concept_metrics,
    correctness_metrics,
    judge_concept,
    quality_metrics,
    rate,
    relative_reduction,
    wilson_interval,
)
from sdd.evaluation.report import (
    cost_curve_lines,
    image_grid,
    rates_csv,
    render_markdown,
    write_grids,
    write_report,
)
from sdd.evaluation.shards import (
    SHARD_FORMAT,
    Merged,
    Shard,
    evaluate_in_shards,
    finish,
    merge,
    run_shard,
    shard_prompt_set,
    split,
    throughput,
)

__all__ = [
    "cost_curve_lines",
    "SHARD_FORMAT", "BaseJudge", "ClipImageFeatures", "ClipJudge", "GenerationSettings", "Judge", "Judged",
    "Judgement", "Merged", "NudeNetJudge", "Shard", "ToyConceptJudge", "apply_gates", "build_judge",
    "concept_metrics", "correctness_metrics", "evaluate", "evaluate_in_shards", "finish", "generate",
    "generate_both", "image_grid", "image_key", "judge_all", "judge_concept", "judgement_records", "load_clip",
    "load_images", "measure", "measure_judged", "merge", "metrics_document", "model_info", "model_infos",
    "parse_toy_prompt", "portable_path", "quality_metrics", "rate", "rates_csv", "read_index", "relative_reduction",
    "render_markdown", "robustness_placeholders", "row_guidance", "run_shard", "shard_prompt_set", "split",
    "throughput", "wilson_interval", "write_evaluation", "write_grids", "write_report",
]
