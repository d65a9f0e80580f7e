"""Tests for robust erasure (sdd/erasure/adversary.py): the adversarial pool, resume with it, config.

The retention term that the robust runs use is tested in test_retention.py."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_same_run, interrupt_at_loss
from safetensors.torch import load_file

from sdd.config import AdversarialConfig, ConfigError, DistillConfig, RetentionConfig, validate
from sdd.erasure import Distiller, erase
from sdd.prompts import Concept

CONCEPTS = [Concept("red", ["a red circle", "something red"])]
ADV = dict(every=2, inversion_steps=2, inversion_batch=2, targets=2, fraction=0.5, pool_size=3)
RETENTION = RetentionConfig(prompts=["a blue square", "a circle"], targets=2, batch=2)


def config(adv=None, **overrides) -> DistillConfig:
    base = dict(ddim_steps=4, checkpoint_every=100, seed=1, steps=4, batch_size=4, retention=RETENTION,
                adversarial=AdversarialConfig(**{**ADV, **(adv or {})}))
    return DistillConfig(**{**base, **overrides})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_adversarial_conditionings_are_mixed_at_the_configured_fraction(sd1):
    d = Distiller(sd1, CONCEPTS, config(adv={"fraction": 0.5}))
    adv = d.adversary
    erased = d.conditioner.encode(["a red circle"] * 4)
    assert adv.mix(erased) is erased  # no attack yet: nothing to mix
    d.train(1)  # step 0 attacks: the pool holds the found conditionings
    assert adv.state.attacks == 1 and 1 <= len(adv.state.pool) <= 3
    pool = torch.cat([c.hidden_states for c in adv.state.pool])
    mixed = adv.mix(erased)
    assert len(mixed) == 4 and adv.adversarial_slots(4) == 2
    assert torch.equal(mixed.hidden_states[:2], erased.hidden_states[:2])
    for h in mixed.hidden_states[2:]:
        assert any(torch.equal(h, p) for p in pool)
    # The adversarial hidden states differ from every prompt's: they came from the learnt token.
    assert not torch.equal(mixed.hidden_states[2], erased.hidden_states[0])
    adv.cfg.fraction = 0.25
    assert adv.adversarial_slots(8) == 2 and adv.adversarial_slots(4) == 1


def test_jitter_and_blend_erase_a_neighbourhood_of_the_pool(sd1):
    d = Distiller(sd1, CONCEPTS, config(adv={"every": 1, "pool_size": 3, "fraction": 1.0}))
    d.train(2)
    adv, erased = d.adversary, d.conditioner.encode(["a red circle"] * 64)
    pool = torch.cat([c.hidden_states for c in adv.state.pool])

    adv.cfg.jitter = 0.5  # Gaussian noise at half each token's RMS
    for h in adv.mix(erased).hidden_states:
        nearest = min(pool, key=lambda p: (h - p).norm())
        rel = ((h - nearest).pow(2).mean(-1).sqrt() / nearest.pow(2).mean(-1).sqrt())
        assert 0.3 < rel.mean() < 0.7

    adv.cfg.jitter, adv.cfg.blend = 0.0, 1.0  # every draw a blend λ·a + (1-λ)·b, λ in [-0.5, 1.5]
    flat = pool.flatten(1)
    lams = []
    for h in adv.mix(erased).hidden_states:
        # Solve h = λ·a + (1-λ)·b for some pair (a, b) of pool members.
        fits = [(((h.flatten() - b) @ (a - b)) / (a - b).pow(2).sum(), a, b)
                for i, a in enumerate(flat) for j, b in enumerate(flat) if i != j]
        lam, a, b = min(fits, key=lambda f: (f[0] * f[1] + (1 - f[0]) * f[2] - h.flatten()).norm())
        if torch.allclose(lam * a + (1 - lam) * b, h.flatten(), atol=1e-4):
            lams.append(lam.item())
        else:  # the same member drawn twice
            assert any(torch.allclose(h.flatten(), p, atol=1e-5) for p in flat)
    assert len(lams) > 32 and -0.5 <= min(lams) < 0 and 1 < max(lams) <= 1.5


def test_attacks_take_turns_and_the_token_attack_finds_a_real_prefix(sd1):
    d = Distiller(sd1, CONCEPTS, config(adv={"every": 1, "attacks": ["inversion", "tokens"], "prefix_tokens": 3,
                                             "prefix_steps": 2, "pool_size": 10}, steps=4))
    tokenizer, embeddings = sd1.tokenizer, sd1.text_encoder.get_input_embeddings()
    d.train(2)
    adv = d.adversary
    assert adv.state.attacks == 2 and list(adv.state.embeddings) == [0] and len(adv.state.prefixes) == 1
    assert sd1.tokenizer is tokenizer and sd1.text_encoder.get_input_embeddings() is embeddings
    # The prefix is real vocabulary (no placeholder), k tokens long; its prompts joined the pool.
    prefix = adv.state.prefixes[0]
    assert "<sdd-" not in prefix and len(tokenizer(prefix, add_special_tokens=False).input_ids) >= 1
    # The inversion's token replaces each whole concept prompt here (one prompt); the prefix precedes both.
    assert len(adv.state.pool) == 3
    plain = d.conditioner.encode(CONCEPTS[0].prompts).hidden_states
    assert not any(torch.equal(c.hidden_states[0], p) for c in adv.state.pool[1:] for p in plain)
    d.train(4)  # up to step 4
    assert adv.state.attacks == 4 and len(adv.state.prefixes) == 2


def test_pool_keeps_the_newest_conditionings(sd1):
    d = Distiller(sd1, CONCEPTS, config(adv={"every": 1, "pool_size": 3}, steps=4))
    d.train(4)
    assert d.adversary.state.attacks == 4 and len(d.adversary.state.pool) == 3


def test_the_settle_steps_attack_no_more_but_still_distil_the_pool(sd1):
    d = Distiller(sd1, CONCEPTS, config(adv={"every": 1, "settle_steps": 2, "pool_size": 10}, steps=5))
    d.train(3)  # steps 0-2 attack
    pool = list(d.adversary.state.pool)
    assert d.adversary.state.attacks == 3
    d.train(5)  # steps 3-4 are the last two: no attack, the pool is still mixed in
    assert d.adversary.state.attacks == 3 and d.adversary.state.pool == pool
    assert d.adversary.adversarial_slots(4) == 2


def test_attack_leaves_the_pipeline_and_the_student_gradients_alone(sd1):
    tokenizer, embeddings = sd1.tokenizer, sd1.text_encoder.get_input_embeddings()
    d = Distiller(sd1, CONCEPTS, config())
    d.adversary.prepare()
    assert sd1.tokenizer is tokenizer and sd1.text_encoder.get_input_embeddings() is embeddings
    assert all(p.grad is None for p in d.student_params)  # the inversion took grads of the token only
    assert d.adversary.state.targets is None  # pending until the step is committed
    d.adversary.commit()
    assert d.adversary.state.targets.shape[0] == 2


def test_resume_with_the_adversary_is_bit_identical(tiny_dirs, tmp_path, monkeypatch):
    cfg = config(adv={"attacks": ["inversion", "tokens"]}, steps=6, checkpoint_every=3)
    erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "straight", cfg)

    with interrupt_at_loss(monkeypatch, 5):  # step 5, after its attack (every 2: step index 4)
        erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "resumed", cfg)
    meta = json.loads((tmp_path / "resumed/checkpoint/state.json").read_text())
    assert meta["step"] == 4 and meta["adversarial"]["attacks"] == 2
    erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "resumed", cfg, resume=True)
    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert_same_run(a, b)
    saved = load_file(str(a / "checkpoint/state.safetensors"))
    assert any(k.startswith("adv.pool.") for k in saved) and "retention.latents" in saved
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["adversarial"]["attacks"] == 3 and manifest["config"]["adversarial"]["every"] == 2


def test_a_plain_checkpoint_does_not_resume_as_robust(tiny_dirs, tmp_path):
    plain = config(steps=2, checkpoint_every=1).model_copy(update={"adversarial": None})
    with pytest.raises(KeyboardInterrupt):
        erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "x", plain,
              on_step=lambda s, loss: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(ConfigError, match="adversarial"):
        erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "x", config(steps=2, checkpoint_every=1), resume=True)


@pytest.mark.parametrize("kind", ["sd2", "sdxl"])
def test_robust_erasure_runs_on_other_architectures(tiny_dirs, tmp_path, kind):
    cfg = config(adv={"attacks": ["inversion", "tokens"]}, steps=3, train_method="full")
    result = erase(str(tiny_dirs[kind]), CONCEPTS, tmp_path / kind, cfg)
    assert result.steps == 3 and result.final_loss is not None
    summary = json.loads(result.manifest.read_text())["adversarial"]
    assert summary["attacks"] == 2 and summary["pool"] >= 2 and len(summary["prefixes"]) == 1


@pytest.mark.parametrize(("field", "value", "message"), [
    ("fraction", 1.5, "adversarial.fraction"),
    ("jitter", -0.1, "adversarial.jitter"),
    ("blend", 2, "adversarial.blend"),
    ("every", 0, "adversarial.every"),
    ("settle_steps", -1, "adversarial.settle_steps"),
    ("attacks", ["inversion", "guess"], "adversarial.attacks"),
    ("attacks", [], "adversarial.attacks"),
    ("prefix_tokens", 0, "adversarial.prefix_tokens"),
    ("retention_prompts", ["a circle"], "adversarial.retention_prompts"),  # moved to retention.prompts
    ("unknown", 1, "adversarial.unknown"),
])
def test_bad_adversarial_settings_are_one_line_errors(field, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate(DistillConfig, {"adversarial": {field: value}}, "robust.yaml")
    assert "\n" not in str(err.value)


def test_the_preset_is_valid():
    from sdd.config import load_model

    cfg = load_model(DistillConfig, "params/presets/robust.yaml")
    assert cfg.adversarial is not None and cfg.adversarial.attacks == ["inversion", "tokens"]
    assert cfg.train_method == "xattn_out" and cfg.retention.prompts
    assert not any("red" in p for p in cfg.retention.prompts)
