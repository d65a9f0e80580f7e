"""The post-promotion check: does the model behind an alias behave as its version's metrics say?

After ``production`` (or any alias) moves to a version, :func:`check_promoted` loads
``models:/<name>@<alias>`` through pyfunc -- exactly what a consumer loads -- and:

1. reads the version's recorded evaluation from its MLflow run (``evaluation/metrics.json``) and the
   rows it evaluated (``evaluation/prompts.jsonl``, see :data:`sdd.layout.EVAL_PROMPTS_FILE`);
2. draws a seeded sample of those rows (:func:`sample_rows`: ``samples`` rows per concept and of
   the benign prompts; each row keeps its own image seed), generates them with the loaded model and
   the recorded generation settings, and judges them with the judge of ``params/eval.yaml``;
3. compares (:func:`compare_with_recorded`) each concept's erased presence rate and the benign
   correctness (toy judge) with the recorded values; optionally reruns the red team and compares each
   concept's union attack success rate (with the recorded red team's settings,
   ``evaluation/redteam/metrics.json``, unless others are given).

**Statistics.** With the same weights, prompts, seeds and settings the redrawn images are the
recorded ones, so the sample's rate is a simple random sample (without replacement) of the recorded
population, whose rate is the recorded value. A Wilson score interval for a sample of a finite
population covers its rate at least as often as its nominal level (the finite-population correction
only narrows the true spread), so a recorded value outside the sample's interval is evidence that
the served model is not the evaluated one (other weights, another judge, a broken artifact). The
check makes one comparison per concept and one for quality (and one per concept for the red team);
each interval is at level ``1 - (1 - confidence) / m`` (Bonferroni), so an unchanged model fails the
whole check with probability at most ``1 - confidence``. The red team's attacks are seeded; a rerun
with other budgets than the recorded ones would measure something else, hence the recorded settings.

This module is library code: the ``promoted-check`` flow (``flows/promote.py``) calls it, writes its
Markdown (:func:`render_check`) as an artifact and fails when :attr:`CheckResult.passed` is false.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdd.config import EvalConfig, PostPromotionCheckConfig, RedteamConfig, RegistryConfig, RobustnessGatesConfig
from sdd.errors import RegistryInputError
from sdd.evaluation import wilson_interval
from sdd.layout import EVAL_PROMPTS_FILE, METRICS_FILE, REDTEAM_DIR
from sdd.prompts import PromptSet

#: Where the version's run keeps its evaluation (see :func:`sdd.registry.tracking.log_erasure`).
EVALUATION_ARTIFACTS = "evaluation"
BENIGN = "benign"


# --- the comparison (pure) ----------------------------------------------------------------------


@dataclass
class Comparison:
    """One recorded rate against the rate of the redrawn sample."""

    what: str  # e.g. "red: erased presence rate"
    recorded: float
    count: int
    n: int
    low: float
    high: float
    confidence: float  # of this interval (already Bonferroni-adjusted)

    @property
    def rate(self) -> float | None:
        return self.count / self.n if self.n else None

    @property
    def ok(self) -> bool:
        return self.low <= self.recorded <= self.high

    @property
    def reason(self) -> str:
        inside = "inside" if self.ok else "OUTSIDE"
        return (f"{self.what}: recorded {self.recorded:.4g} {inside} the sample's {100 * self.confidence:.4g} % "
                f"interval [{self.low:.3f}, {self.high:.3f}] ({self.count}/{self.n})")


@dataclass
class CheckResult:
    name: str
    version: int
    alias: str
    comparisons: list[Comparison]
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None

    @property
    def passed(self) -> bool:
        return bool(self.comparisons) and all(c.ok for c in self.comparisons)

    @property
    def mismatches(self) -> list[str]:
        return [c.reason for c in self.comparisons if not c.ok]


def compare_rate(what: str, recorded: float, flags: Sequence[bool], confidence: float) -> Comparison:
    """``recorded`` against the Wilson interval of ``flags`` (k successes of n) at ``confidence``."""
    k, n = int(sum(bool(f) for f in flags)), len(flags)
    low, high = wilson_interval(k, n, confidence)
    return Comparison(what, float(recorded), k, n, low, high, confidence)


def recorded_erased_rates(metrics: dict[str, Any]) -> dict[str, float]:
    """Each concept's erased presence rate in ``metrics.json`` (concepts never measured are left out)."""
    return {c: m["erased"]["rate"] for c, m in (metrics.get("concepts") or {}).items()
            if m.get("erased", {}).get("rate") is not None}


def recorded_correctness(metrics: dict[str, Any]) -> float | None:
    """The erased model's benign correctness (colour and shape right) in ``metrics.json``, if measured."""
    correctness = ((metrics.get("quality") or {}).get("correctness") or {}).get("erased") or {}
    return (correctness.get("both") or {}).get("accuracy")


def recorded_union_asr(metrics: dict[str, Any]) -> dict[str, float]:
    """Each concept's union attack success rate of the recorded red team (none when it did not run)."""
    concepts = ((metrics.get("redteam") or {}).get("concepts")) or {}
    return {c: m["union"]["rate"] for c, m in concepts.items() if m["union"].get("rate") is not None}


def compare_with_recorded(metrics: dict[str, Any], erased_present: dict[str, Sequence[bool]],
                          correct: Sequence[bool] | None, confidence: float,
                          union_success: dict[str, Sequence[bool]] | None = None) -> list[Comparison]:
    """Every recorded rate that was redrawn, against its sample, with Bonferroni-adjusted intervals.

    ``erased_present``: concept -> the judge's verdict on each redrawn image of its rows;
    ``correct``: per redrawn benign image, colour and shape right (None: not judged);
    ``union_success``: concept -> per effective prompt of a rerun red team, any attack succeeded.
    """
    pairs: list[tuple[str, float, Sequence[bool]]] = []
    rates = recorded_erased_rates(metrics)
    pairs += [(f"{c}: erased presence rate", rates[c], flags) for c, flags in erased_present.items()
              if c in rates and len(flags)]
    quality = recorded_correctness(metrics)
    if correct is not None and quality is not None and len(correct):
        pairs.append(("benign correctness (colour and shape)", quality, correct))
    union = recorded_union_asr(metrics)
    pairs += [(f"{c}: red-team union attack success", union[c], flags)
              for c, flags in (union_success or {}).items() if c in union and len(flags)]
    if not pairs:
        return []
    each = 1 - (1 - confidence) / len(pairs)
    return [compare_rate(what, recorded, flags, each) for what, recorded, flags in pairs]


def sample_rows(prompt_set: PromptSet, samples: int, seed: int) -> dict[str, list[int]]:
    """Up to ``samples`` row indices per concept and of the benign rows (key ``benign``), seeded."""
    rng = random.Random(seed)
    groups = {c: prompt_set.indices_for(c) for c in prompt_set.concepts()}
    groups[BENIGN] = prompt_set.benign_indices()
    return {g: sorted(rng.sample(idx, min(samples, len(idx)))) for g, idx in groups.items() if idx}


# --- rendering ----------------------------------------------------------------------------------


def render_check(result: CheckResult) -> str:
    """The Markdown the ``promoted-check`` flow publishes: verdict, one row per comparison, notes."""
    verdict = "PASS" if result.passed else "FAIL"
    lines = [f"## Post-promotion check of {result.name}@{result.alias} (version {result.version}): **{verdict}**",
             "", "| what | recorded | sample | interval | result |", "|---|---:|---:|---|---|"]
    lines += [f"| {c.what} | {c.recorded:.4g} | {c.count}/{c.n} | [{c.low:.3f}, {c.high:.3f}] at "
              f"{100 * c.confidence:.4g} % | {'ok' if c.ok else '**mismatch**'} |" for c in result.comparisons]
    if not result.comparisons:
        lines += ["| (nothing to compare) | | | | **fail** |"]
    if result.mismatches:
        lines += ["", "The served model does not behave as its recorded evaluation:", ""]
        lines += [f"- {m}" for m in result.mismatches]
    if result.notes:
        lines += ["", *[f"- {n}" for n in result.notes]]
    if result.run_id:
        lines += ["", f"Recorded evaluation: `runs:/{result.run_id}/{EVALUATION_ARTIFACTS}/{METRICS_FILE}`"]
    return "\n".join(lines)


# --- redrawing with the served model ------------------------------------------------------------


@dataclass
class RecordedEvaluation:
    """What the version's MLflow run recorded: metrics, the rows evaluated, the red team's settings."""

    metrics: dict[str, Any]
    prompt_set: PromptSet
    redteam: RedteamConfig | None  # None: not red-teamed, or registered before its settings were logged


def recorded_evaluation(run_id: str, store, dst: Path) -> RecordedEvaluation:
    """The version's ``metrics.json``, evaluated prompt set and red-team settings, from its run's artifacts."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from sdd.prompts import read_prompt_set
    from sdd.registry.store import mlflow_at

    try:
        with mlflow_at(store):
            local = Path(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=EVALUATION_ARTIFACTS, dst_path=str(dst),
                tracking_uri=store.tracking_uri, registry_uri=store.registry_uri))
    except (MlflowException, OSError) as e:
        raise RegistryInputError(f"run {run_id} has no '{EVALUATION_ARTIFACTS}' artifacts ({type(e).__name__}); "
                                 f"register the version from an evaluated erasure") from None
    missing = [f for f in (METRICS_FILE, EVAL_PROMPTS_FILE) if not (local / f).is_file()]
    if missing:
        raise RegistryInputError(f"run {run_id} has no {EVALUATION_ARTIFACTS}/{missing[0]}: it was registered "
                                 f"before evaluated prompts were logged; re-register it with the erase-concepts flow")
    metrics = json.loads((local / METRICS_FILE).read_text(encoding="utf-8"))
    prompt_set = read_prompt_set(local / EVAL_PROMPTS_FILE)
    if prompt_set.sha256 != (metrics.get("prompt_set") or {}).get("sha256"):
        raise RegistryInputError(f"run {run_id}: {EVAL_PROMPTS_FILE} is not the prompt set of its {METRICS_FILE}")
    redteam_file = local / REDTEAM_DIR / METRICS_FILE
    redteam = None
    if redteam_file.is_file():
        redteam = RedteamConfig.model_validate(json.loads(redteam_file.read_text(encoding="utf-8"))["config"])
    return RecordedEvaluation(metrics, prompt_set, redteam)


def redraw(model, prompt_set: PromptSet, indices: Sequence[int], metrics: dict[str, Any],
           batch_size: int) -> list:
    """The rows ``indices`` drawn by the pyfunc ``model`` with the recorded settings: PIL images, in order."""
    import pandas as pd

    from sdd.registry.pyfunc import DEFAULT_GUIDANCE, DEFAULT_STEPS, decode_image

    generation = metrics.get("generation") or {}
    steps = int(generation.get("num_inference_steps") or DEFAULT_STEPS)
    default_guidance = float(generation.get("guidance_scale") or DEFAULT_GUIDANCE)
    images: dict[int, Any] = {}
    by_guidance: dict[float, list[int]] = {}
    for i in indices:  # a pipeline call takes one guidance scale; I2P rows carry their own
        row = prompt_set.rows[i]
        by_guidance.setdefault(default_guidance if row.guidance is None else row.guidance, []).append(i)
    for guidance, group in by_guidance.items():
        frame = pd.DataFrame({"prompt": [prompt_set.rows[i].prompt for i in group],
                              "seed": [prompt_set.rows[i].seed for i in group]})
        out = model.predict(frame, params={"num_inference_steps": steps, "guidance_scale": guidance,
                                           "batch_size": batch_size})
        images.update({i: decode_image(data) for i, data in zip(group, out["image"], strict=True)})
    return [images[i] for i in indices]


def _check_judge(metrics: dict[str, Any], judge) -> None:
    recorded = (metrics.get("judge") or {}).get("name")
    if recorded and recorded != judge.name:
        raise RegistryInputError(f"the version was judged by '{recorded}' but params/eval.yaml judge.kind gives "
                                 f"'{judge.name}'; set judge.kind to {recorded}")


def rerun_redteam(model, metrics: dict[str, Any], prompt_set: PromptSet, judge, cfg: RedteamConfig,
                  gates: RobustnessGatesConfig, out_dir: Path, log: Callable[[str], None]) -> dict[str, list[bool]]:
    """The red team against the served pipeline; per concept, the union success of each effective prompt."""
    from sdd.models import load_pipeline
    from sdd.redteam import run_redteam

    base = (metrics.get("models") or {}).get("base") or {}
    base_model = base.get("name") or base.get("path")
    if not base_model:
        raise RegistryInputError("the recorded metrics name no base model; cannot rerun the red team")
    erased = model.unwrap_python_model().pipe
    cfg = cfg.model_copy(update={"cost_curves": None})  # the check compares union rates; curves would double it
    result = run_redteam(load_pipeline(base_model), erased, prompt_set, judge, cfg, out_dir, gates=gates,
                         skip_ineffective=True, log=log)
    flags = {}
    for concept, m in result["redteam"].items():
        count, n = m["union"]["count"], m["union"]["n"]
        flags[concept] = [True] * count + [False] * (n - count)  # only k and n matter to the interval
    return flags


def check_promoted(name: str, version: int | str, alias: str, cfg: RegistryConfig | None = None, *,
                   evaluation: EvalConfig | None = None, redteam: RedteamConfig | None = None,
                   robustness: RobustnessGatesConfig | None = None, check: PostPromotionCheckConfig | None = None,
                   tracking_uri: str | None = None, work_dir: Path | None = None,
                   log: Callable[[str], None] = print) -> CheckResult:
    """Load ``models:/<name>@<alias>``, redraw a sample of version ``version``'s evaluation, compare.

    ``evaluation`` gives the judge (it must be the one the version was judged by) and the batch size;
    ``redteam`` the rerun red team's settings (None: the recorded ones); ``check`` the sample.
    Raises :class:`~sdd.errors.RegistryInputError` when ``alias`` no longer points at ``version``
    (a later promotion; that one gets its own check) or the version has no recorded evaluation.
    """
    from sdd.evaluation import build_judge
    from sdd.registry.promotion import alias_version, load_model
    from sdd.registry.store import resolve_store

    cfg = cfg or RegistryConfig()
    check = check or cfg.post_promotion_check
    evaluation = evaluation or EvalConfig()
    holder = alias_version(name, alias, cfg, tracking_uri=tracking_uri)
    if holder is None or holder.version != int(version):
        now = "no version" if holder is None else f"version {holder.version}"
        raise RegistryInputError(f"{name}@{alias} is now {now}, not version {version}; check the version it "
                                 f"points at instead")
    with tempfile.TemporaryDirectory(prefix="sdd-check-", dir=work_dir) as tmp:
        recorded = recorded_evaluation(holder.run_id, resolve_store(cfg, tracking_uri), Path(tmp))
        metrics, prompt_set = recorded.metrics, recorded.prompt_set
        log(f"loading models:/{name}@{alias} (version {version}) through pyfunc")
        model = load_model(name, alias, cfg, tracking_uri=tracking_uri)
        judge = build_judge(evaluation.judge)
        _check_judge(metrics, judge)
        sample = sample_rows(prompt_set, check.samples, check.seed)
        log(f"redrawing {sum(len(v) for v in sample.values())} of {len(prompt_set)} evaluation rows")
        present: dict[str, list[bool]] = {}
        for concept in recorded_erased_rates(metrics):
            if concept in sample:
                images = redraw(model, prompt_set, sample[concept], metrics, evaluation.batch_size)
                present[concept] = judge.judge(images, [concept])[concept].present
        correct = None
        if BENIGN in sample and hasattr(judge, "correctness"):
            images = redraw(model, prompt_set, sample[BENIGN], metrics, evaluation.batch_size)
            prompts = [prompt_set.rows[i].prompt for i in sample[BENIGN]]
            correct = [bool(j["color"] and j["shape"]) for j in judge.correctness(images, prompts)
                       if j["color"] is not None and j["shape"] is not None]
        notes = [f"sample of {check.samples} rows per group, seed {check.seed}; judge {judge.name}"]
        union = None
        redteam = redteam or recorded.redteam
        if check.redteam and recorded_union_asr(metrics) and redteam is not None:
            log("rerunning the red team on the served model")
            union = rerun_redteam(model, metrics, prompt_set, judge, redteam, robustness or RobustnessGatesConfig(),
                                  Path(tmp) / REDTEAM_DIR, log)
            notes.append(f"red team rerun with {'the recorded' if redteam is recorded.redteam else 'given'} "
                         f"settings: {', '.join(redteam.attacks)}")
        elif check.redteam:
            notes.append("the version has no recorded red team (or its settings): robustness not compared")
        else:
            notes.append("red team not rerun (post_promotion_check.redteam: false)")
    comparisons = compare_with_recorded(metrics, present, correct, check.confidence, union)
    if not comparisons:
        notes.append("nothing comparable was recorded (no erased rates, no correctness)")
    return CheckResult(name, int(version), alias, comparisons, notes, holder.run_id)
