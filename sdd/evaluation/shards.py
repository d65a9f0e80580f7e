"""Sharded evaluation: split a prompt set into N shards, generate and judge each one anywhere, merge.

An evaluation (:func:`sdd.evaluation.evaluate`) is dominated by generation: every row of the prompt
set is drawn by the base and by the erased model. This module cuts that work into shards that can
run in parallel -- one per GPU, or one per worker process on a CPU machine -- and puts the results
back together so that **the merged metrics equal those of a single-process run** with the same
prompt set and settings. That holds because nothing a shard computes depends on which other rows
share its shard:

* **generation** is seeded per row (one CPU ``torch.Generator`` per row, see :mod:`sdd.evaluation.generate`),
  so an image depends only on its model, prompt, seed and guidance, not on its batch or shard;
* **presence judging** is per image, and the merged presence lists are put back in row order;
* **set-level quality** (FID, CLIP score and, for the toy judge, prompt correctness, all computed
  by :func:`sdd.evaluation.quality_metrics`) is *not* a sum of per-shard values -- FID needs the
  mean and covariance of all features at once -- so it is computed once, after the merge, over the
  merged images in row order, exactly as the single-process evaluation does.

The pieces are pure functions with JSON-serialisable results, so any executor can run them (this
module imports neither Prefect nor Dask; :mod:`flows.shards` runs them on a Dask cluster):

1. :func:`split` deals the rows into ``n`` shards, deterministically: rows that make the same image
   (same prompt, seed and guidance) are one unit, and units are dealt round-robin in order of first
   appearance, so shards differ in size by at most one unit and mix concept and benign rows.
2. :func:`run_shard` generates the shard's rows with both models (into a folder of its own, so
   shards never write to the same ``index.jsonl``) and judges every concept on them; it returns a
   :data:`ShardResult` dict (image paths, per-row judgements, the models' weight hashes, timings).
3. :func:`merge` checks that the results cover every row exactly once, come from the same prompt
   set and were made with the same model weights, and puts images and judgements back in row order.
4. :func:`finish` turns the merged shards into the ``metrics.json`` / ``report.md`` /
   ``judgements.jsonl`` that :func:`sdd.evaluation.evaluate` writes, plus ``shards.json`` (which
   shard did which rows, and how long it took).

:func:`evaluate_in_shards` runs all of it in this process, one shard after the other (the
reference the tests compare the parallel run with, and a way to resume one shard by hand).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdd.config import EvalConfig, GatesConfig
from sdd.errors import ShardCountError, ShardError
from sdd.layout import JUDGEMENTS_FILE, ROLES, SHARDS_FILE
from sdd.layout import image_dirs as evaluation_image_dirs
from sdd.prompts import PromptRow, PromptSet
from sdd.storage import write_json_atomic

if TYPE_CHECKING:
    from sdd.evaluation.core import Judged

SHARD_FORMAT = 1

#: What :func:`run_shard` returns (a plain dict, so it crosses process boundaries and persists as JSON):
#: ``format``, ``index``, ``count``, ``prompt_set_sha256``, ``rows`` (global row indices, ascending),
#: ``images`` ({role: [path per row]}), ``judgements`` ({concept: {"rows": [...], role: {"present",
#: "score"}}}), ``models`` ({role: model info incl. ``unet_sha256``}), ``timing``, ``host`` and ``pid``.
ShardResult = dict[str, Any]


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the global indices of its rows in a prompt set (ascending)."""

    index: int
    count: int
    rows: tuple[int, ...]
    prompt_set_sha256: str

    @property
    def name(self) -> str:
        return f"shard-{self.index:03d}-of-{self.count:03d}"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count, "rows": list(self.rows),
                "prompt_set_sha256": self.prompt_set_sha256}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Shard:
        return cls(int(data["index"]), int(data["count"]), tuple(int(i) for i in data["rows"]),
                   str(data["prompt_set_sha256"]))


def _image_identity(row: PromptRow) -> tuple[str, int, float | None]:
    """Rows equal in this are drawn as one image by :func:`sdd.evaluation.generate`: keep them together."""
    return row.prompt, row.seed, row.guidance


def split(prompt_set: PromptSet, n: int) -> list[Shard]:
    """``n`` shards of ``prompt_set``'s rows, the same for the same set and ``n`` on every machine.

    Rows drawing the same image are one unit; units are dealt round-robin in order of first
    appearance. A shard can be empty when the set has fewer than ``n`` distinct images.
    """
    if n < 1:
        raise ShardCountError(f"cannot split into {n} shards; use 1 or more")
    units: dict[tuple, list[int]] = {}
    for i, row in enumerate(prompt_set.rows):
        units.setdefault(_image_identity(row), []).append(i)
    dealt: list[list[int]] = [[] for _ in range(n)]
    for k, rows in enumerate(units.values()):
        dealt[k % n].extend(rows)
    digest = prompt_set.sha256
    return [Shard(i, n, tuple(sorted(rows)), digest) for i, rows in enumerate(dealt)]


def shard_prompt_set(prompt_set: PromptSet, shard: Shard) -> PromptSet:
    """The shard's rows as a prompt set of their own (row ``k`` is global row ``shard.rows[k]``)."""
    if shard.prompt_set_sha256 != prompt_set.sha256:
        raise ShardError(f"{shard.name} was split from another prompt set "
                         f"({shard.prompt_set_sha256[:12]}, not {prompt_set.sha256[:12]})")
    rows = tuple(prompt_set.rows[i] for i in shard.rows)
    return PromptSet(f"{prompt_set.name}[{shard.index + 1}/{shard.count}]", prompt_set.kind, rows,
                     {"shard_of": prompt_set.sha256, "shard": shard.index, "shards": shard.count})


def image_dirs(out_dir: Path, shard: Shard, base_images: Path | None = None) -> dict[str, Path]:
    """Where a shard's images go: ``<out_dir>/images/<role>/<shard name>`` (base: under ``base_images``)."""
    return {role: root / shard.name for role, root in evaluation_image_dirs(out_dir, base_images).items()}


# --- one shard ----------------------------------------------------------------------------------


def run_shard(shard: Shard, prompt_set: PromptSet, base_pipe, erased_pipe, judge, cfg: EvalConfig,
              out_dir: Path, *, base_images: Path | None = None, base_name: str | None = None,
              erased_name: str | None = None, progress: bool = False) -> ShardResult:
    """Generate the shard's rows with both models and judge every concept on them.

    Generation is resumable as in :func:`sdd.evaluation.generate`: rerunning a crashed shard keeps
    the images it finished. Returns a :data:`ShardResult` (JSON-serialisable).
    """
    import os
    import platform

    from sdd.evaluation.core import generate_both, judge_all, model_infos

    subset = shard_prompt_set(prompt_set, shard)
    models = model_infos(base_pipe, erased_pipe, base_name, erased_name)
    t0 = time.perf_counter()
    paths = generate_both(base_pipe, erased_pipe, subset, image_dirs(out_dir, shard, base_images), cfg, models,
                          progress=progress, desc=shard.name)
    t1 = time.perf_counter()
    judged = judge_all(judge, subset, paths, concepts=prompt_set.concepts())  # every concept of the set
    judgements = {concept: {"rows": [shard.rows[k] for k in subset.indices_for(concept)],
                            **{role: {"present": [bool(p) for p in j.present], "score": [float(x) for x in j.score]}
                               for role, j in by_role.items()}}
                  for concept, by_role in judged.items()}
    images = {role: [str(p) for p in role_paths] for role, role_paths in paths.items()}
    t2 = time.perf_counter()
    return {"format": SHARD_FORMAT, **shard.to_dict(), "images": images, "judgements": judgements,
            "models": models, "host": platform.node(), "pid": os.getpid(),
            "timing": {"generate_s": t1 - t0, "judge_s": t2 - t1, "images": 2 * len(shard.rows)}}


# --- merging ------------------------------------------------------------------------------------


@dataclass
class Merged:
    """Shard results put back in the prompt set's row order."""

    paths: dict[str, list[Path]]                   # role -> one image path per row
    judged: Judged                                 # concept -> role -> judgement per row of indices_for(concept)
    models: dict[str, dict[str, Any]]              # role -> model info (equal in every shard)
    shards: list[dict[str, Any]]                   # per shard: index, rows, host, timing

    @property
    def presence(self) -> dict[str, dict[str, list[bool]]]:
        return {c: {role: list(j.present) for role, j in by_role.items()} for c, by_role in self.judged.items()}


def merge(prompt_set: PromptSet, results: Sequence[ShardResult]) -> Merged:
    """Check the results partition the set's rows and agree on the models; reorder them by row.

    Raises :class:`ShardError` when a shard is missing or duplicated, a row is covered twice or
    not at all, a result comes from another prompt set, or shards evaluated different weights.
    """
    if not results:
        raise ShardError("no shard results to merge")
    digest, n_rows = prompt_set.sha256, len(prompt_set)
    count = results[0]["count"]
    seen_shards: set[int] = set()
    owner: dict[int, int] = {}
    for r in results:
        if r.get("format") != SHARD_FORMAT:
            raise ShardError(f"shard result format {r.get('format')} is not {SHARD_FORMAT}; rerun the shard")
        if r["prompt_set_sha256"] != digest:
            raise ShardError(f"shard {r['index']} was made from another prompt set ({r['prompt_set_sha256'][:12]})")
        if r["count"] != count:
            raise ShardError(f"shard {r['index']} is one of {r['count']}, the others of {count}")
        if r["index"] in seen_shards:
            raise ShardError(f"shard {r['index']} appears twice")
        seen_shards.add(r["index"])
        for i in r["rows"]:
            if i in owner:
                raise ShardError(f"row {i} is in shards {owner[i]} and {r['index']}")
            owner[i] = r["index"]
    missing = sorted(set(range(n_rows)) - set(owner))
    if missing:
        raise ShardError(f"rows {missing[:5]}{'...' if len(missing) > 5 else ''} are in no shard result "
                         f"({len(missing)} of {n_rows}); run the missing shards")
    if set(owner) - set(range(n_rows)):
        raise ShardError(f"a shard names rows outside the set's {n_rows} rows")

    reference = results[0]["models"]
    for r in results[1:]:
        for role in ROLES:
            if r["models"][role].get("unet_sha256") != reference[role].get("unet_sha256"):
                raise ShardError(f"shards {results[0]['index']} and {r['index']} used different {role} weights")

    paths: dict[str, list[Path | None]] = {role: [None] * n_rows for role in ROLES}
    by_row: dict[str, dict[str, dict[int, tuple[bool, float]]]] = {}
    for r in results:
        for role in ROLES:
            for i, p in zip(r["rows"], r["images"][role], strict=True):
                paths[role][i] = Path(p)
        for concept, entry in r["judgements"].items():
            for role in ROLES:
                target = by_row.setdefault(concept, {}).setdefault(role, {})
                for i, present, score in zip(entry["rows"], entry[role]["present"], entry[role]["score"],
                                             strict=True):
                    target[i] = (present, score)
    from sdd.evaluation.judges import Judgement

    judged: Judged = {}
    for concept in prompt_set.concepts():
        idx = prompt_set.indices_for(concept)
        judged[concept] = {}
        for role in ROLES:
            found = by_row.get(concept, {}).get(role, {})
            if set(found) != set(idx):
                raise ShardError(f"the shards judged '{concept}' on {len(found)} rows, the set has {len(idx)}")
            judged[concept][role] = Judgement([found[i][0] for i in idx], [found[i][1] for i in idx])
    shards = sorted(({"index": r["index"], "rows": len(r["rows"]), "host": r.get("host"), "pid": r.get("pid"),
                      "timing": r.get("timing")} for r in results), key=lambda s: s["index"])
    return Merged({role: list(v) for role, v in paths.items()}, judged, reference, shards)


# --- metrics from merged shards -----------------------------------------------------------------


def measure_merged(prompt_set: PromptSet, merged: Merged, judge, cfg: EvalConfig,
                   judgements_file: Path | None = None) -> dict[str, Any]:
    """:func:`sdd.evaluation.measure`'s result, from the shards' judgements and the merged images."""
    from sdd.evaluation.core import measure_judged

    return measure_judged(prompt_set, merged.judged, merged.paths, judge, cfg, judgements_file)


def finish(prompt_set: PromptSet, results: Sequence[ShardResult], judge, cfg: EvalConfig, gates: GatesConfig,
           out_dir: Path) -> dict[str, Any]:
    """Merge the shard results and write what :func:`sdd.evaluation.evaluate` writes, plus ``shards.json``.

    Returns the metrics dict (also in ``out_dir/metrics.json``): the same keys and values as a
    single-process evaluation of the same set with the same models and settings.
    """
    from sdd.evaluation.core import write_evaluation

    out_dir = Path(out_dir)
    merged = merge(prompt_set, results)
    measured = measure_merged(prompt_set, merged, judge, cfg, out_dir / JUDGEMENTS_FILE)
    metrics = write_evaluation(out_dir, merged.models, prompt_set, judge, cfg, gates, measured, merged.paths)
    write_json_atomic(out_dir / SHARDS_FILE, {"format": SHARD_FORMAT, "prompt_set_sha256": prompt_set.sha256,
                                              "count": results[0]["count"], "shards": merged.shards})
    return metrics


def evaluate_in_shards(base_pipe, erased_pipe, prompt_set: PromptSet, judge, cfg: EvalConfig,
                       gates: GatesConfig, out_dir: Path, n: int, *, base_name: str | None = None,
                       erased_name: str | None = None, base_images: Path | None = None,
                       progress: bool = False) -> dict[str, Any]:
    """The whole sharded evaluation in this process, shard after shard (see the module docstring)."""
    results = [run_shard(s, prompt_set, base_pipe, erased_pipe, judge, cfg, out_dir, base_images=base_images,
                         base_name=base_name, erased_name=erased_name, progress=progress)
               for s in split(prompt_set, n) if s.rows]
    return finish(prompt_set, results, judge, cfg, gates, out_dir)


def throughput(results: Sequence[ShardResult], wall_s: float) -> dict[str, Any]:
    """Images per second over a run's wall time, and the shards' own generation rates."""
    images = sum(r["timing"]["images"] for r in results)
    per_shard = [r["timing"]["images"] / r["timing"]["generate_s"] for r in results if r["timing"]["generate_s"]]
    return {"images": images, "wall_s": wall_s, "images_per_s": images / wall_s if wall_s else None,
            "shard_images_per_s": per_shard}


__all__ = ["Merged", "Shard", "ShardError", "ShardResult", "evaluate_in_shards", "finish", "image_dirs",
           "measure_merged", "merge", "run_shard", "shard_prompt_set", "split", "throughput"]
