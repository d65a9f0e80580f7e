"""The toy world works: data, tokenizer, the committed pipeline and judge, and the build itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from sdd.config import ToyConfig
from sdd.toy import TOY_CLIP_DIR, TOY_JUDGE_DIR, TOY_PIPELINE_DIR, world
from sdd.toy.judge import ToyJudge, judge_accuracy
from sdd.toy.quality import generate_images, measure_quality, text_geometry


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


def test_held_out_synonyms_caption_clip_images_but_never_unet_images():
    """The last name of each colour is in the mini-CLIP's captions only, as CLIP knows words the
    diffusion model's captions never used."""
    import collections
    import random

    from sdd.toy.quality import held_out_synonyms
    from sdd.toy.train import _captioned_example

    held_out = set(held_out_synonyms())
    assert held_out == {names[-1] for names, _ in world.COLORS.values()}
    clip_words = {w for c in world.sample_batch(400, seed=0, partial_fraction=0.4)[1] for w in c.split()}
    assert held_out <= clip_words
    colors, shapes = world.sample_batch(200, seed=1)[2:]
    by_pair = collections.defaultdict(list)
    for i, pair in enumerate(zip(colors, shapes, strict=True)):
        by_pair[pair].append(i)
    by_pair.update({(c, s): [0] for c in world.COLOR_NAMES for s in world.SHAPE_NAMES if (c, s) not in by_pair})
    rng = random.Random(0)
    unet_words = {w for i in range(200) for w in _captioned_example(i, colors, shapes, by_pair, rng, 0.4)[1].split()}
    assert not held_out & unet_words and {"red", "crimson"} <= unet_words


def test_natural_distribution_is_long_tailed():
    _, _, colors, shapes = world.sample_batch(2000, seed=0, natural_fraction=1.0)
    assert colors.count("red") / 2000 < 0.05 and shapes.count("triangle") / 2000 < 0.05
    assert colors.count("blue") / 2000 > 0.25


def test_tokenizer_handles_any_text(toy_pipe):
    tok = toy_pipe.tokenizer
    ids = tok("a crimson wedge, nudity & 42 #!").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.model_max_length == toy_pipe.text_encoder.config.max_position_embeddings


def test_text_encoder_is_the_pretrained_mini_clip_text_tower(toy_pipe):
    """A real CLIP text transformer (layers, causal attention, learned positions), shipped with its
    image tower as a CLIPModel, and the pipeline's text encoder is exactly its text tower."""
    from transformers import CLIPModel, CLIPProcessor

    encoder = toy_pipe.text_encoder
    assert encoder.config.num_hidden_layers >= 4
    assert encoder.config.hidden_size == toy_pipe.unet.config.cross_attention_dim
    clip = CLIPModel.from_pretrained(TOY_CLIP_DIR)
    CLIPProcessor.from_pretrained(TOY_CLIP_DIR)
    tower = clip.text_model.state_dict()
    assert tower.keys() == encoder.state_dict().keys()
    assert all(torch.equal(tower[k], v) for k, v in encoder.state_dict().items())


def test_text_states_are_contextual_and_the_empty_prompt_is_not_zero(toy_pipe):
    """Causal attention: the padding after a prompt carries the prompt, the tokens before a word
    do not see it; nothing is zeroed, so the empty prompt has states like any other prompt."""
    tok, encoder = toy_pipe.tokenizer, toy_pipe.text_encoder

    def states(prompt: str) -> torch.Tensor:
        ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        with torch.no_grad():
            return encoder(ids)[0][0]

    red, green = states("a red circle"), states("a green circle")
    assert torch.allclose(red[:2], green[:2])  # <start> and "a": before the colour word
    assert not torch.allclose(red[-1], green[-1], atol=1e-3)  # the last padding position knows the colour
    empty = states("")
    assert float(empty.norm()) > 0.5 * float(red.norm())


def test_text_geometry_comes_from_pretraining(toy_pipe):
    """Synonyms end up close because they caption the same images; different colours do not."""
    geo = text_geometry(toy_pipe)
    assert geo["layers"] >= 4
    assert geo["mean_synonym"]["prompt"] > geo["mean_different_colour"]["prompt"] + 0.2, geo
    assert geo["mean_synonym"]["end"] > geo["mean_different_colour"]["end"] + 0.2, geo
    assert all(c["prompt"] > max(d["prompt"] for d in geo["different_colours"].values())
               for c in geo["synonyms"].values()), geo


def test_mini_clip_is_a_working_zero_shot_classifier(toy_pipe):
    from transformers import CLIPModel

    from sdd.toy.clip import zero_shot_accuracy

    acc = zero_shot_accuracy(CLIPModel.from_pretrained(TOY_CLIP_DIR), toy_pipe.tokenizer, n=200)
    assert acc["color_accuracy"] >= 0.95 and acc["shape_accuracy"] >= 0.9, acc


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
    assert q["shape_rate"] >= 0.90, q
    assert q["held_out_synonym_n"] > 0 and q["held_out_synonym_rate"] >= 0.80, q


@pytest.mark.slow
def test_build_from_scratch_produces_a_loadable_world(tmp_path):
    from transformers import CLIPModel

    from sdd.toy.train import build_toy_world

    cfg = ToyConfig(clip_steps=3, clip_batch_size=8, vae_steps=3, unet_steps=3, judge_steps=3, batch_size=8)
    report = build_toy_world(tmp_path, cfg, log=lambda msg: None)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    images = generate_images(pipe, ["a red circle"], [0], steps=2)
    assert images.shape == (1, 3, world.IMAGE_SIZE, world.IMAGE_SIZE)
    color_probs, shape_probs = ToyJudge.load(tmp_path / "judge").classify(images)  # the saved judge works
    clip = CLIPModel.from_pretrained(tmp_path / "clip")  # the saved mini-CLIP loads, its text tower is the encoder
    assert torch.equal(clip.text_model.embeddings.token_embedding.weight,
                       pipe.text_encoder.get_input_embeddings().weight)
    assert color_probs.shape == (1, len(world.COLOR_NAMES)) and shape_probs.shape == (1, len(world.SHAPE_NAMES))
    assert report["timings"]["total_s"] > 0
