"""Faults with real processes: `sdd erase` and `sdd evaluate` killed with SIGKILL and resumed, and outputs
that cannot be written.

The erase kill test runs the CLI as a subprocess on the toy model with tiny settings, kills it at a
random moment after its first checkpoint, resumes it with ``--resume`` and checks that the final
``patch.safetensors`` is bit-for-bit the one an uninterrupted run writes (README: resuming is
bit-identical on CPU). The evaluate kill test kills ``sdd evaluate`` once some images are in a
generation index, reruns it, and checks that no finished image was drawn again and that the metrics
are those of an uninterrupted evaluation. The write-failure tests make writes fail for real: an output path below a
regular file (root ignores permission bits, so chmod is no test here) and a file-size limit
(``RLIMIT_FSIZE``, as on a full disk: writes fail with EFBIG) in the middle of writing the model.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import digest, image_stamps, indexed_keys, sdd_command, sdd_env, toy_prompt_set
from typer.testing import CliRunner

from sdd.cli import app
from sdd.config import DistillConfig
from sdd.erasure import erase
from sdd.layout import CHECKPOINT_DIR, PATCH_FILE, image_dirs
from sdd.prompts import default_concepts, write_prompt_set

REPO = Path(__file__).resolve().parents[1]
# Self-attention training keeps the checkpoint (~1.9 MB) well below the model's UNet (~9.3 MB), so the
# write-failure test can put a file-size limit between the two; the xattn checkpoint (~12 MB) is larger.
TINY = {"steps": 12, "batch_size": 1, "ddim_steps": 4, "checkpoint_every": 2, "seed": 3, "train_method": "selfattn"}
CONCEPT = "red"
SUBPROCESS_TIMEOUT_S = 300


def tree_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run with the same settings (in-process, one thread, as the subprocesses)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        erase("toy", default_concepts("toy", [CONCEPT]), out, DistillConfig(**TINY))
    finally:
        torch.set_num_threads(threads)
    return out


def checkpoint_step(out: Path) -> int | None:
    try:
        return json.loads((out / CHECKPOINT_DIR / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_after_a_checkpoint_then_resume_is_bit_identical(tmp_path, params_file, reference):
    seed = int(os.environ.get("SDD_FAULT_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    out = tmp_path / "out"
    args = ("erase", "--model", "toy", "--concept", CONCEPT, "--out", str(out), "--config", str(params_file))
    log = tmp_path / "killed.log"
    with open(log, "wb") as sink:  # a file, not a pipe: a full pipe would stall the child
        proc = subprocess.Popen(sdd_command(*args), cwd=REPO, env=sdd_env(), stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while checkpoint_step(out) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"seed {seed}: ended before the kill: {log.read_text()[-2000:]}"
        time.sleep(rng.uniform(0, 0.8))  # a random point after the first checkpoint
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"seed {seed}: exited {proc.returncode}: {log.read_text()[-2000:]}"
    killed_at = checkpoint_step(out)
    assert not (out / PATCH_FILE).exists() or killed_at == TINY["steps"], f"seed {seed}"

    resumed = subprocess.run(sdd_command(*args, "--resume"), cwd=REPO, env=sdd_env(), capture_output=True,
                             text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert resumed.returncode == 0, f"seed {seed}, killed at step {killed_at}: {resumed.stderr[-2000:]}"
    assert digest(out / PATCH_FILE) == digest(reference / PATCH_FILE), \
        f"seed {seed}: resumed after a kill at checkpoint step {killed_at} differs from the uninterrupted run"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == TINY["steps"]
    assert (out / "loss.csv").read_text() == (reference / "loss.csv").read_text()
    assert not list(out.glob(".*.tmp")), "a temporary folder of an interrupted write was left behind"


# 16 rows in batches of 4: 4 pipeline calls per model; the kill waits for 1 to 3 of them.
EVAL_ROWS = 16
EVAL_PARAMS = {"num_inference_steps": 5, "batch_size": 4, "grid_images": 2}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_9_of_evaluate_mid_generation_then_rerun_resumes_with_the_same_metrics(tmp_path, erased_toy):
    seed = int(os.environ.get("SDD_FAULT_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    role = rng.choice(["base", "erased"])  # killed while drawing this model's images
    at_least = rng.randrange(1, EVAL_ROWS // EVAL_PARAMS["batch_size"]) * EVAL_PARAMS["batch_size"]
    prompts, params = tmp_path / "prompts.jsonl", tmp_path / "eval.yaml"
    write_prompt_set(toy_prompt_set(EVAL_ROWS), prompts)
    params.write_text(yaml.safe_dump(EVAL_PARAMS))
    out, reference = tmp_path / "resumed", tmp_path / "uninterrupted"

    def command(folder: Path) -> list[str]:
        return sdd_command("evaluate", "--base", "toy", "--model", str(erased_toy), "--prompts", str(prompts),
                           "--out", str(folder), "--params", str(params))

    # The uninterrupted run goes alongside the one to kill: the kill waits on the index, not on the clock.
    with open(tmp_path / "reference.log", "wb") as ref_log, open(tmp_path / "killed.log", "wb") as log:
        uninterrupted = subprocess.Popen(command(reference), cwd=REPO, env=sdd_env(), stdout=ref_log,
                                         stderr=subprocess.STDOUT)
        proc = subprocess.Popen(command(out), cwd=REPO, env=sdd_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    folder = image_dirs(out)[role]
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while len(indexed_keys(folder)) < at_least and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert uninterrupted.wait(timeout=SUBPROCESS_TIMEOUT_S) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    finally:
        for p in (proc, uninterrupted):
            if p.poll() is None:
                p.kill()
                p.wait()
    context = f"seed {seed}, killed in {role} after {at_least} images: {(tmp_path / 'killed.log').read_text()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL, context
    assert at_least <= len(indexed_keys(folder)) < EVAL_ROWS, context
    assert not (out / "metrics.json").exists(), context
    finished = {r: image_stamps(f) for r, f in image_dirs(out).items()}

    rerun = subprocess.run(command(out), cwd=REPO, env=sdd_env(), capture_output=True, text=True,
                           timeout=SUBPROCESS_TIMEOUT_S)
    assert rerun.returncode == 0, f"{context}\n{rerun.stderr[-3000:]}"
    for r, f in image_dirs(out).items():
        after = image_stamps(f)
        assert {k: after.get(k) for k in finished[r]} == finished[r], f"{context}: {r} images drawn again"
        keys = indexed_keys(f)
        assert len(keys) == len(set(keys)) == EVAL_ROWS, f"{context}: {r} index {len(keys)} lines"
        assert {k: v[2] for k, v in after.items()} == \
            {k: v[2] for k, v in image_stamps(image_dirs(reference)[r]).items()}, f"{context}: {r} images differ"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads((reference / "metrics.json").read_text()), context
    assert metrics["concepts"]["red"]["n"] > 0 and metrics["quality"]["n"] > 0  # both kinds of rows drawn
    assert (out / "judgements.jsonl").read_bytes() == (reference / "judgements.jsonl").read_bytes()


def test_output_below_a_regular_file_is_one_line_error_before_any_work(tmp_path, params_file, monkeypatch):
    monkeypatch.chdir(REPO)
    blocker = tmp_path / "previous-run.txt"
    blocker.write_text("keep me")
    out = blocker / "out"
    result = CliRunner().invoke(app, ["erase", "--model", "toy", "--concept", CONCEPT, "--out", str(out),
                                      "--config", str(params_file)])
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not writable" in lines[0], result.stderr
    assert str(out) in lines[0]
    assert blocker.read_text() == "keep me"


def test_evaluate_out_below_a_regular_file_is_one_line_error_before_loading_models(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    prompts = tmp_path / "prompts"
    assert CliRunner().invoke(app, ["prompts", "build", "--concept", CONCEPT, "--out", str(prompts)]).exit_code == 0
    blocker = tmp_path / "previous-eval.txt"
    blocker.write_text("keep me")
    out = blocker / "eval"
    result = CliRunner().invoke(app, ["evaluate", "--base", "toy", "--model", "no-such-model-folder",
                                      "--prompts", str(prompts), "--out", str(out)])
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "not writable" in lines[0] and str(out) in lines[0], result.stderr
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("model_kind", ["toy", "real"])
def test_prompts_build_below_a_regular_file_is_one_line_error(tmp_path, monkeypatch, model_kind):
    monkeypatch.chdir(REPO)
    blocker = tmp_path / "previous-prompts.txt"
    blocker.write_text("keep me")
    out = blocker / "prompts"
    result = CliRunner().invoke(app, ["prompts", "build", "--concept", CONCEPT, "--model-kind", model_kind,
                                      "--out", str(out)])
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not writable" in lines[0], result.stderr
    assert str(out) in lines[0] and "Traceback" not in result.output
    assert blocker.read_text() == "keep me"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_write_failure_mid_outputs_leaves_previous_outputs_intact(tmp_path, params_file, reference):
    """Continue a finished run by 2 steps with a 4 MB file-size limit: the 9.3 MB UNet cannot be written."""
    out = tmp_path / "out"
    import shutil

    shutil.copytree(reference, out)
    before = tree_digests(out)
    limit = 4 * 1024 * 1024  # the checkpoint (~1.9 MB) fits, the model's UNet (~9.3 MB) does not

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = ("erase", "--model", "toy", "--concept", CONCEPT, "--out", str(out), "--config", str(params_file),
            "--resume", "--steps", str(TINY["steps"] + 2))
    result = subprocess.run(sdd_command(*args), cwd=REPO, env=sdd_env(), capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT_S, preexec_fn=limit_file_size)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "File too large" in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    after = tree_digests(out)
    # Every output of the finished run is untouched; only the checkpoint moved on (atomically).
    assert {k: v for k, v in after.items() if not k.startswith(CHECKPOINT_DIR)} == \
        {k: v for k, v in before.items() if not k.startswith(CHECKPOINT_DIR)}
    assert checkpoint_step(out) == TINY["steps"] + 2
    assert not list(out.glob(".*.tmp")), "a temporary folder of the failed write was left behind"


def test_patch_bytes_do_not_depend_on_the_process(tmp_path):
    """safetensors orders metadata by a randomly seeded hash map; the patch must not (same patch, same bytes)."""
    from types import SimpleNamespace

    from safetensors.torch import load_file

    from sdd.erasure import save_patch
    from sdd.prompts import Concept

    teacher = [torch.arange(6.0).reshape(2, 3), torch.ones(4)]
    fake = SimpleNamespace(config=SimpleNamespace(train_method="xattn"), base_hash="ab" * 32,
                           concepts=[Concept("red", ["a red shape"]), Concept("Van Gogh")],
                           trained=["up.attn2.to_k.weight", "down.attn2.to_q.bias"], teacher_params=teacher)
    digests = set()
    for i in range(12):
        save_patch(fake, tmp_path / f"patch{i}.safetensors")
        digests.add(digest(tmp_path / f"patch{i}.safetensors"))
    assert len(digests) == 1
    loaded = load_file(tmp_path / "patch0.safetensors")
    assert torch.equal(loaded["up.attn2.to_k.weight"], teacher[0]) and torch.equal(loaded["down.attn2.to_q.bias"],
                                                                                   teacher[1])


def test_resume_recovers_what_a_kill_inside_a_folder_swap_left(tmp_path):
    """A kill between atomic_path's two renames leaves only ``.checkpoint.old``; a staging folder may remain too."""
    from sdd.storage import atomic_path, recover_interrupted_writes

    out = tmp_path / "out"
    with atomic_path(out / CHECKPOINT_DIR) as staged:
        staged.mkdir()
        (staged / "state.json").write_text('{"step": 4}')
    (out / CHECKPOINT_DIR).rename(out / f".{CHECKPOINT_DIR}.old")  # the first rename of the next swap
    (out / f".{CHECKPOINT_DIR}.abc123.tmp" / CHECKPOINT_DIR).mkdir(parents=True)  # its staging folder
    (out / ".patch.safetensors.old").write_text("stale")  # left next to a target that exists
    (out / "patch.safetensors").write_text("good")

    actions = recover_interrupted_writes(out)

    assert checkpoint_step(out) == 4
    assert (out / "patch.safetensors").read_text() == "good"
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT_DIR, "patch.safetensors"]
    assert len(actions) == 3 and f"restored {CHECKPOINT_DIR} from .{CHECKPOINT_DIR}.old" in actions
