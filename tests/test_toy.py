"""The toy world works: data, tokenizer, the committed pipeline and judge, and the build itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from sdd.config import ToyConfig
from sdd.toy import TOY_JUDGE_DIR, TOY_PIPELINE_DIR, world
from sdd.toy.judge import ToyJudge, judge_accuracy
from sdd.toy.quality import generate_images, measure_quality


@pytest.fixture(scope="module")
def toy_pipe():
    pipe = StableDiffusionPipeline.from_pretrained(TOY_PIPELINE_DIR)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def judge():
    return ToyJudge.load(TOY_JUDGE_DIR)


def test_vocabulary_has_enough_colours_shapes_and_synonyms():
    assert len(world.COLORS) >= 5 and all(len(names) >= 3 for names, _ in world.COLORS.values())
    assert len(world.SHAPES) >= 4 and all(len(names) >= 2 for names in world.SHAPES.values())
    assert not set(world.TRAIN_TEMPLATES) & set(world.HELDOUT_TEMPLATES)


def test_sampling_is_seeded_and_captions_match_the_scene():
    a = world.sample_batch(16, seed=3, natural_fraction=0.2, partial_fraction=0.2)
    b = world.sample_batch(16, seed=3, natural_fraction=0.2, partial_fraction=0.2)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    for caption, color, shape in zip(a[1], a[2], a[3], strict=True):
        words = caption.split()
        named_colors = {world.color_of(w) for w in words} - {None}
        named_shapes = {world.shape_of(w) for w in words} - {None}
        assert named_colors <= {color} and named_shapes <= {shape}


def test_natural_distribution_is_long_tailed():
    _, _, colors, shapes = world.sample_batch(2000, seed=0, natural_fraction=1.0)
    assert colors.count("red") / 2000 < 0.05 and shapes.count("triangle") / 2000 < 0.05
    assert colors.count("blue") / 2000 > 0.25


def test_tokenizer_handles_any_text(toy_pipe):
    tok = toy_pipe.tokenizer
    ids = tok("a crimson wedge, nudity & 42 #!").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.model_max_length == toy_pipe.text_encoder.config.max_position_embeddings


def test_text_encoder_gives_each_concept_its_own_direction(toy_pipe):
    """Frozen word vectors: concepts orthogonal, synonyms close, the empty prompt all zeros."""
    tok, encoder = toy_pipe.tokenizer, toy_pipe.text_encoder

    def state(word: str) -> torch.Tensor:
        ids = tok([word], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        with torch.no_grad():
            return torch.nn.functional.normalize(encoder(ids)[0][0, 1], dim=-1)

    red, crimson, green, triangle = (state(w) for w in ("red", "crimson", "green", "triangle"))
    assert abs(float(red @ green)) < 0.05 and abs(float(red @ triangle)) < 0.05
    assert float(red @ crimson) == pytest.approx(0.8, abs=0.05)
    empty = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.count_nonzero(encoder(empty)[0]) == 0


def test_word_vectors_are_orthogonal_except_synonyms(toy_pipe):
    from sdd.toy.train import TEXT_DIM, word_embeddings

    tok = toy_pipe.tokenizer
    table = word_embeddings(tok, TEXT_DIM, seed=0)
    vocab = tok.get_vocab()
    synonyms = {vocab[f"{n}</w>"]: group for group, names in
                [*((c, names) for c, (names, _) in world.COLORS.items()), *world.SHAPES.items()] for n in names}
    special = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    cosines = table @ table.T
    for i in range(len(table)):
        for j in range(i + 1, len(table)):
            same = i in synonyms and synonyms[i] == synonyms.get(j)
            assert float(cosines[i, j]) == pytest.approx(0.8 if same else 0.0, abs=1e-5), (i, j)
    assert all(float(table[i].norm()) == (0.0 if i in special else pytest.approx(1.0)) for i in range(len(table)))


def test_pipeline_round_trips_bit_identically(toy_pipe, tmp_path):
    toy_pipe.save_pretrained(tmp_path / "copy")
    again = StableDiffusionPipeline.from_pretrained(tmp_path / "copy")
    again.set_progress_bar_config(disable=True)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(toy_pipe, name).state_dict(), getattr(again, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    prompts, seeds = ["a red circle", "one lemon box"], [1, 2]
    assert torch.equal(generate_images(toy_pipe, prompts, seeds, steps=5),
                       generate_images(again, prompts, seeds, steps=5))


def test_judge_is_accurate_on_fresh_images(judge):
    acc = judge_accuracy(judge, n=500, seed=777)
    assert acc["color_accuracy"] >= 0.98 and acc["shape_accuracy"] >= 0.98


def test_base_model_meets_the_quality_bar_on_held_out_captions(toy_pipe, judge):
    q = measure_quality(toy_pipe, judge, samples_per_pair=3, seed=1)
    assert q["color_rate"] >= 0.90, q
    assert q["shape_rate"] >= 0.80, q


@pytest.mark.slow
def test_build_from_scratch_produces_a_loadable_world(tmp_path):
    from sdd.toy.train import build_toy_world

    cfg = ToyConfig(vae_steps=3, unet_steps=3, judge_steps=3, batch_size=8)
    report = build_toy_world(tmp_path, cfg, log=lambda msg: None)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    images = generate_images(pipe, ["a red circle"], [0], steps=2)
    assert images.shape == (1, 3, world.IMAGE_SIZE, world.IMAGE_SIZE)
    color_probs, shape_probs = ToyJudge.load(tmp_path / "judge").classify(images)  # the saved judge works
    assert color_probs.shape == (1, len(world.COLOR_NAMES)) and shape_probs.shape == (1, len(world.SHAPE_NAMES))
    assert report["timings"]["total_s"] > 0
