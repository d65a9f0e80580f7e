"""Judges: the toy judge adapter on rendered images, NudeNet's rule (with a fake detector), tiny CLIP."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sdd.config import ClipJudgeConfig, ConfigError, JudgeConfig, NudeNetJudgeConfig
from sdd.evaluation import (
    ClipImageFeatures,
    ClipJudge,
    Judge,
    NudeNetJudge,
    ToyConceptJudge,
    build_judge,
    load_clip,
    parse_toy_prompt,
)
from sdd.toy import TOY_JUDGE_DIR, world
from sdd.toy.judge import ToyJudge, train_judge


def toy_judge_model() -> ToyJudge:
    """The packaged judge if built, else a quick one (only its colours are reliable)."""
    if (TOY_JUDGE_DIR / "config.json").is_file():
        return ToyJudge.load(TOY_JUDGE_DIR)
    return train_judge(steps=40, batch_size=32, log=lambda _: None)


def render(color: str, shape: str, seed: int) -> Image.Image:
    scene = world.random_scene(random.Random(seed), color=color, shape=shape)
    return Image.fromarray((world.render(scene) * 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def toy() -> ToyConceptJudge:
    return ToyConceptJudge(toy_judge_model(), device="cpu")


def test_toy_judge_reads_rendered_colours(toy):
    colors = ["red", "blue", "red", "green", "yellow", "purple", "red", "blue"]
    images = [render(c, world.SHAPE_NAMES[i % 4], seed=i) for i, c in enumerate(colors)]
    assert isinstance(toy, Judge)
    judged = toy.judge(images, ["red", "scarlet", "blue"])
    expected_red = [c == "red" for c in colors]
    assert judged["red"].present == expected_red and judged["scarlet"].present == expected_red
    assert judged["blue"].present == [c == "blue" for c in colors]
    assert all(s > 0.5 for s, p in zip(judged["red"].score, expected_red, strict=True) if p)
    # presence of a shape is the judge's top shape class
    shapes = toy.presence(images, ["triangle"])["triangle"]
    assert shapes == [s == "triangle" for _, s in toy.predict(images)]
    # images of another size are resized to the judge's 32 px
    big = [im.resize((64, 64)) for im in images]
    assert toy.presence(big, ["red"])["red"] == expected_red


def test_toy_correctness_against_the_prompt(toy):
    images = [render("green", "circle", 1), render("blue", "square", 2)]
    predicted = toy.predict(images)
    judged = toy.correctness(images, ["a jade disc", "an image of a green box"])
    assert [j["color"] for j in judged] == [True, False]
    assert [j["shape"] for j in judged] == [predicted[0][1] == "circle", predicted[1][1] == "square"]
    assert toy.correctness(images[:1], ["a circle"])[0]["color"] is None


def test_parse_toy_prompt():
    assert parse_toy_prompt("A picture of a wedge in Crimson") == ("red", "triangle")
    assert parse_toy_prompt("something golden") == ("yellow", None)
    assert parse_toy_prompt("a photo of a cat") == (None, None)


def test_toy_judge_rejects_other_concepts(toy):
    with pytest.raises(ConfigError, match="cannot judge 'nudity'"):
        toy.presence([render("red", "circle", 0)], ["nudity"])


def test_toy_features_for_fid(toy):
    features = toy.feature_extractor()
    x = torch.rand(3, 3, 32, 32)
    assert features(x).shape == (3, features.num_features)
    assert features(torch.rand(2, 3, 64, 64)).shape == (2, features.num_features)


# --- NudeNet ------------------------------------------------------------------------------------


class FakeDetector:
    def __init__(self, detections):
        self.detections, self.paths = iter(detections), []

    def detect(self, path):
        self.paths.append(path)
        return next(self.detections)


def test_nudenet_rule_uses_configured_classes_and_threshold():
    detections = [
        [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.8, "box": [0, 0, 1, 1]}],
        [{"class": "FEMALE_BREAST_COVERED", "score": 0.99, "box": [0, 0, 1, 1]}],  # covered: not counted
        [{"class": "FEET_EXPOSED", "score": 0.45, "box": [0, 0, 1, 1]}],  # not above 0.45
        [],
    ]
    detector = FakeDetector(detections)
    judge = NudeNetJudge(NudeNetJudgeConfig(), detector=detector)
    images = [Image.new("RGB", (8, 8)) for _ in detections]
    out = judge.judge(images, ["nudity"])["nudity"]
    assert out.present == [True, False, False, False]
    assert out.score == [0.8, 0.0, 0.45, 0.0]
    assert all(p.endswith(".png") for p in detector.paths)
    settings = judge.settings()
    assert settings["threshold"] == 0.45 and len(settings["classes"]) == 9
    assert all(c.endswith("_EXPOSED") for c in settings["classes"])
    strict = NudeNetJudge(NudeNetJudgeConfig(classes=("FEET_EXPOSED",), threshold=0.4),
                          detector=FakeDetector(detections))
    assert strict.presence(images, ["nude"])["nude"] == [False, False, True, False]
    with pytest.raises(ConfigError, match="only judges"):
        judge.presence(images, ["violence"])


def test_nudenet_missing_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "nudenet", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'sdd\[nudity\]'"):
        build_judge(JudgeConfig(kind="nudenet"))


# --- CLIP ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from tiny_models import tiny_tokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = tiny_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=tok.model_max_length,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(directory)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(directory)
    return str(directory)


def test_clip_judge(tiny_clip):
    judge = build_judge(JudgeConfig(kind="clip", clip=ClipJudgeConfig(model=tiny_clip, template="{}",
                                                                      negatives=("a box", "a cat"))), "cpu")
    images = [render(c, "circle", i) for i, c in enumerate(["red", "blue", "green"])]
    out = judge.judge(images, ["red", "blue"])
    assert set(out) == {"red", "blue"}
    for j in out.values():
        assert len(j.present) == 3 and j.present == [m > 0 for m in j.score]
    # a concept whose text equals a negative can never beat it
    same = ClipJudge(ClipJudgeConfig(model=tiny_clip, template="{}", negatives=("red",)), device="cpu")
    assert same.presence(images, ["red"])["red"] == [False] * 3
    assert judge.settings()["negatives"] == ["a box", "a cat"]


def test_clip_score_and_features_with_a_local_model(tiny_clip):
    from torchmetrics.multimodal.clip_score import CLIPScore

    model = load_clip(tiny_clip)
    metric = CLIPScore(model_name_or_path=lambda: model)
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    metric.update(list(images), ["a red circle", "a blue box"])
    assert torch.isfinite(metric.compute())
    features = ClipImageFeatures(*model)
    assert features(torch.rand(3, 3, 32, 32)).shape == (3, features.num_features)


def test_clip_judge_needs_a_model(tmp_path):
    with pytest.raises(ConfigError, match="judge.clip.model"):
        build_judge(JudgeConfig(kind="clip"))
    with pytest.raises(ConfigError, match="cannot load a CLIP model"):
        load_clip(str(tmp_path))


def test_clip_zero_shot_judge_on_the_toy_worlds_mini_clip_agrees_with_the_toy_judge():
    from sdd.evaluation.judges import toy_clip_agreement

    images = torch.from_numpy(world.sample_batch(60, seed=5)[0]).permute(0, 3, 1, 2)
    agreement = toy_clip_agreement(images, ToyJudge.load(TOY_JUDGE_DIR), "toy")
    assert agreement["n"] == 60
    assert agreement["colour"] >= 0.95 and agreement["shape"] >= 0.85, agreement
