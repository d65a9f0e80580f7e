"""A real full disk (ENOSPC) under `sdd prompts build`, `sdd erase` and `sdd evaluate`.

Each test mounts a small tmpfs (it needs root with CAP_SYS_ADMIN, as our machines and CI have),
fills it with one preallocated file so that only a little space is left, runs the command there
and checks: one ``error:`` line naming the cause, no traceback, earlier outputs byte-identical,
nothing half-written left; then it frees the space and checks that the same command completes.
``tests/test_faults.py`` emulates the same with a file-size limit (EFBIG); this is the real errno.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import sdd_command, sdd_env, toy_prompt_set
from test_faults import (
    CONCEPT,
    EVAL_PARAMS,
    EVAL_ROWS,
    SUBPROCESS_TIMEOUT_S,
    TINY,
    checkpoint_step,
    image_stamps,
    indexed_keys,
    params_file,  # noqa: F401 (fixture)
    reference,  # noqa: F401 (fixture)
    tree_digests,
)

from sdd.layout import image_dirs
from sdd.prompts import write_prompt_set

REPO = Path(__file__).resolve().parents[1]
NO_SPACE = "No space left on device"

pytestmark = pytest.mark.slow


class SmallDisk:
    """A tmpfs mounted at ``root``; :meth:`fill` leaves ``bytes`` free, :meth:`free` gives the space back."""

    def __init__(self, root: Path):
        self.root = root
        self.filler = root / ".filler"

    def available(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int) -> None:
        self.free()
        with open(self.filler, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, max(self.available() - leave, 1))

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def disk(tmp_path):
    root = tmp_path / "disk"
    root.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(root)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); needs root with CAP_SYS_ADMIN")
    try:
        yield SmallDisk(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def run_sdd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(sdd_command(*args), cwd=REPO, env=sdd_env(), capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)


def assert_one_line_no_space(result: subprocess.CompletedProcess) -> None:
    assert result.returncode != 0, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and NO_SPACE in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def assert_nothing_half_written(folder: Path) -> None:
    assert not [p for p in folder.rglob(".*") if p.name != ".filler" and p.name.endswith(".tmp")], \
        sorted(str(p) for p in folder.rglob(".*"))


def test_prompts_build_on_a_full_disk_keeps_the_earlier_set_and_completes_once_freed(disk):
    out = disk.root / "prompts"
    assert run_sdd("prompts", "build", "--concept", CONCEPT, "--out", str(out)).returncode == 0
    before = tree_digests(out)

    disk.fill(leave=0)
    failed = run_sdd("prompts", "build", "--concept", "triangle", "--out", str(out))
    assert_one_line_no_space(failed)
    assert tree_digests(out) == before
    assert_nothing_half_written(disk.root)

    disk.free()
    rebuilt = run_sdd("prompts", "build", "--concept", "triangle", "--out", str(out))
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert tree_digests(out) != before


def test_erase_on_a_full_disk_keeps_the_previous_outputs_and_resumes_once_freed(disk, params_file, reference):  # noqa: F811
    """Continue a finished run by 2 steps with 4 MB free: the checkpoint (~1.9 MB) fits, the UNet (~9.3 MB) not."""
    out = disk.root / "out"
    shutil.copytree(reference, out)
    before = tree_digests(out)
    args = ("erase", "--model", "toy", "--concept", CONCEPT, "--out", str(out), "--config", str(params_file),
            "--resume", "--steps", str(TINY["steps"] + 2))

    disk.fill(leave=4 * 1024 * 1024)
    failed = run_sdd(*args)
    assert_one_line_no_space(failed)
    after = tree_digests(out)
    assert {k: v for k, v in after.items() if not k.startswith("checkpoint")} == \
        {k: v for k, v in before.items() if not k.startswith("checkpoint")}
    assert checkpoint_step(out) in (TINY["steps"], TINY["steps"] + 2)  # moved on atomically, or not at all
    assert_nothing_half_written(disk.root)

    disk.free()
    resumed = run_sdd(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "manifest.json").is_file() and checkpoint_step(out) == TINY["steps"] + 2
    assert tree_digests(out)["patch.safetensors"] != before["patch.safetensors"]


def test_evaluate_on_a_full_disk_keeps_finished_images_and_completes_once_freed(disk, tmp_path, erased_toy):
    prompts, params = tmp_path / "prompts.jsonl", tmp_path / "eval.yaml"
    write_prompt_set(toy_prompt_set(EVAL_ROWS), prompts)
    params.write_text(yaml.safe_dump(EVAL_PARAMS))
    out = disk.root / "eval"
    args = ("evaluate", "--base", "toy", "--model", str(erased_toy), "--prompts", str(prompts),
            "--out", str(out), "--params", str(params))

    disk.fill(leave=48 * 1024)  # some images fit, not all of both models'
    failed = run_sdd(*args)
    assert_one_line_no_space(failed)
    assert not (out / "metrics.json").exists()
    finished = {role: image_stamps(folder) for role, folder in image_dirs(out).items()}

    disk.free()
    rerun = run_sdd(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for role, folder in image_dirs(out).items():
        after = image_stamps(folder)
        assert {k: after.get(k) for k in finished[role]} == finished[role], f"{role} images drawn again"
        keys = indexed_keys(folder)
        assert len(keys) == len(set(keys)) == EVAL_ROWS, f"{role} index {len(keys)} lines"
    assert (out / "metrics.json").is_file()
