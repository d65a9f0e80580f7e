"""Tests for the retention term (sdd/erasure/retention.py): its target, its prompts, resume, config."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_same_run, interrupt_at_loss
from safetensors.torch import load_file

from sdd.config import ConfigError, DistillConfig, RetentionConfig, validate
from sdd.erasure import Distiller, benign_only, erase
from sdd.prompts import Concept

CONCEPTS = [Concept("red", ["a red circle", "something red"])]


def config(retention=None, **overrides) -> DistillConfig:
    keep = {"prompts": ["a blue square", "a circle"], "targets": 2, "batch": 2, **(retention or {})}
    base = dict(ddim_steps=4, checkpoint_every=100, seed=1, steps=4, batch_size=4, retention=RetentionConfig(**keep))
    return DistillConfig(**{**base, **overrides})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_retention_target_is_the_frozen_base_and_is_stop_gradient(sd1):
    d = Distiller(sd1, CONCEPTS, config({"weight": 2.0}))
    assert d.adversary is None  # retention works without robust erasure
    d.train(2)
    base_params = dict(d.base.named_parameters())
    student_params = dict(d.student.named_parameters())
    for name in d.trained:  # the base copy kept the untrained weights; the student moved on
        assert not base_params[name].requires_grad
    assert any(not torch.equal(base_params[n], student_params[n]) for n in d.trained)
    # At the base weights the retention loss is zero; its gradient reaches the student only.
    with torch.no_grad():
        for name in d.trained:
            student_params[name].copy_(base_params[name])
    assert d.retention.loss().item() == 0.0
    with torch.no_grad():
        for p in d.student_params:
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    loss = d.retention.loss()
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is None for p in d.base.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.student_params)


def test_the_latents_are_the_base_models_drawn_once_before_the_first_step(sd1):
    d = Distiller(sd1, CONCEPTS, config())
    assert d.retention.latents is None
    d.train(1)
    latents = d.retention.latents
    assert latents.shape[0] == 2 and latents.shape[1:] == d.latent_shape
    d.train(3)
    assert d.retention.latents is latents


def test_retention_prompts_that_name_an_erased_concept_are_left_out(sd1):
    prompts = ["a blue square", "a RED box", "something red here", "a reddish circle", "a circle"]
    assert benign_only(prompts, CONCEPTS) == ["a blue square", "a reddish circle", "a circle"]
    d = Distiller(sd1, CONCEPTS, config({"prompts": ["a red square", "a blue square"]}))
    assert d.retention.prompts == ["a blue square"]
    with pytest.raises(ConfigError, match="retention.prompts"):
        Distiller(sd1, CONCEPTS, config({"prompts": ["a red square"]}))


def test_plain_sdd_has_no_base_copy_and_no_retention(sd1):
    d = Distiller(sd1, CONCEPTS, config().model_copy(update={"retention": None}))
    assert d.base is None and d.retention is None


def test_resume_with_retention_is_bit_identical(tiny_dirs, tmp_path, monkeypatch):
    cfg = config(steps=4, checkpoint_every=2)
    erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "straight", cfg)

    with interrupt_at_loss(monkeypatch, 4):  # step 4
        erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "resumed", cfg)
    erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "resumed", cfg, resume=True)
    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert_same_run(a, b)
    assert "retention.latents" in load_file(str(a / "checkpoint/state.safetensors"))
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["retention"]["prompts"] == 2 and manifest["retention"]["latents"] == 2
    assert manifest["retention"]["last_loss"] > 0 and "adversarial" not in manifest


@pytest.mark.parametrize(("value", "message"), [
    ({"prompts": []}, "retention.prompts"),
    ({"prompts": ["ok", " "]}, "retention.prompts"),
    ({"prompts": ["ok"], "weight": 0}, "retention.weight"),
    ({"prompts": ["ok"], "batch": 0}, "retention.batch"),
    ({"weight": 1.0}, "retention.prompts"),
    ({"prompts": ["ok"], "unknown": 1}, "retention.unknown"),
])
def test_bad_retention_settings_are_one_line_errors(value, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate(DistillConfig, {"retention": value}, "distill.yaml")
    assert "\n" not in str(err.value)


def test_the_default_settings_hold_benign_prompts_without_an_adversary():
    from sdd.config import load_model

    cfg = load_model(DistillConfig, "params/distill.yaml")
    assert cfg.retention is not None and cfg.adversarial is None and len(cfg.retention.prompts) >= 20
