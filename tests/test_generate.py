"""Generation: per-row seeding (batch-size independent), resume, settings checks, per-row guidance."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from tiny_models import tiny_sd_pipeline, tiny_sdxl_pipeline

from sdd.config import ConfigError
from sdd.evaluation import GenerationSettings, generate, read_index
from sdd.evaluation.generate import INDEX_FILE
from sdd.prompts import PromptRow, PromptSet

SETTINGS = GenerationSettings(num_inference_steps=2, guidance_scale=4.0)


class CountingPipe:
    """Wraps a pipeline and records the prompts of every call."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []

    def __call__(self, **kwargs):
        self.calls.append(list(kwargs["prompt"]))
        return self.pipe(**kwargs)


@pytest.fixture(scope="module")
def pipe():
    p = tiny_sd_pipeline()
    p.set_progress_bar_config(disable=True)
    return p


def rows(n: int = 5) -> PromptSet:
    return PromptSet("t", "custom", tuple(PromptRow(prompt=f"a red box {i}", seed=100 + i) for i in range(n)))


def pixels(paths) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in paths]


def test_images_do_not_depend_on_batch_size(tmp_path, pipe):
    a = generate(pipe, rows(), tmp_path / "a", SETTINGS, batch_size=2, progress=False)
    b = generate(pipe, rows(), tmp_path / "b", SETTINGS, batch_size=5, progress=False)
    assert len(a) == 5 and all(p.is_file() for p in a)
    for x, y in zip(pixels(a), pixels(b), strict=True):
        np.testing.assert_allclose(x.astype(int), y.astype(int), atol=1)
    assert not np.array_equal(pixels(a)[0], pixels(a)[1])  # different seeds, different images
    index = [json.loads(line) for line in (tmp_path / "a" / INDEX_FILE).read_text().splitlines()]
    assert [r["seed"] for r in index] == [100, 101, 102, 103, 104] and index[0]["guidance"] == 4.0


def test_resume_generates_only_missing_rows(tmp_path, pipe):
    first = generate(pipe, rows(3), tmp_path, SETTINGS, batch_size=2, progress=False)
    before = pixels(first)
    # a crash mid-append leaves a torn line; it is ignored
    with open(tmp_path / INDEX_FILE, "a") as f:
        f.write('{"key": "abc", "fi')
    counting = CountingPipe(pipe)
    paths = generate(counting, rows(5), tmp_path, SETTINGS, batch_size=2, progress=False)
    assert counting.calls == [["a red box 3", "a red box 4"]]
    assert paths[:3] == first
    assert all(np.array_equal(x, y) for x, y in zip(pixels(first), before, strict=True))
    assert len(read_index(tmp_path)) == 5
    counting.calls.clear()
    generate(counting, rows(5), tmp_path, SETTINGS, batch_size=2, progress=False)
    assert counting.calls == []


def test_progress_reaches_a_log_when_one_is_given(tmp_path, pipe):
    """A flow passes its logger: the stage ends with a line saying how many images, at what rate."""
    generate(pipe, rows(2), tmp_path, SETTINGS, batch_size=2, progress=False)
    lines = []
    generate(pipe, rows(5), tmp_path, SETTINGS, batch_size=2, progress=False, desc="generate (erased)",
             log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("generate (erased): 5/5 images (100 %), "), lines
    assert "images/s, done in" in lines[0]


def test_other_settings_in_the_same_folder_are_refused(tmp_path, pipe):
    generate(pipe, rows(1), tmp_path, SETTINGS, progress=False)
    with pytest.raises(ConfigError, match="num_inference_steps"):
        generate(pipe, rows(1), tmp_path, GenerationSettings(num_inference_steps=3, guidance_scale=4.0),
                 progress=False)
    with pytest.raises(ConfigError, match="model_id"):
        generate(pipe, rows(1), tmp_path, GenerationSettings(2, 4.0, model_id="other"), progress=False)


def test_rows_with_their_own_guidance_are_batched_apart(tmp_path, pipe):
    mixed = PromptSet("m", "custom", (
        PromptRow(prompt="a", seed=1), PromptRow(prompt="b", seed=2, guidance=9.0),
        PromptRow(prompt="c", seed=3), PromptRow(prompt="a", seed=1)))
    seen = []

    def spy(**kwargs):
        seen.append((kwargs["guidance_scale"], list(kwargs["prompt"])))
        return pipe(**kwargs)

    paths = generate(spy, mixed, tmp_path, SETTINGS, batch_size=8, progress=False)
    assert sorted(seen) == [(4.0, ["a", "c"]), (9.0, ["b"])]  # the duplicate row is drawn once
    assert paths[0] == paths[3]


def test_sdxl_pipeline(tmp_path):
    pipe = tiny_sdxl_pipeline()
    pipe.set_progress_bar_config(disable=True)
    paths = generate(pipe, rows(2), tmp_path, SETTINGS, batch_size=2, progress=False)
    assert [Image.open(p).size for p in paths] == [(16, 16), (16, 16)]
