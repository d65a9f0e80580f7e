"""Tests for text-encoder erasure (``train_method: text_encoder`` and ``text_encoder+xattn``, issue 31):
what trains, where the gradient flows, the EMA teacher's text encoder, resume, patches, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_same_run, interrupt_at_loss
from safetensors.torch import load_file

from sdd.config import AdversarialConfig, ConfigError, DistillConfig, RetentionConfig
from sdd.erasure import Distiller, apply_patch, erase, sdd_loss, select_parameters
from sdd.erasure.adversary_inputs import InputPrompt
from sdd.models import latent_shape, load_pipeline, predict, weights_hash
from sdd.prompts import Concept

CONCEPTS = [Concept("red", ["a red circle", "something red"])]
RETENTION = RetentionConfig(prompts=["a blue square", "a circle"], targets=2, batch=2)
ADVERSARY = AdversarialConfig(every=2, attacks=["inversion", "tokens"], inversion_steps=2, inversion_batch=2,
                              prefix_steps=2, prefix_tokens=2, targets=2, fraction=0.5, pool_size=3, jitter=0.1)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(method="text_encoder", **overrides) -> DistillConfig:
    base = dict(ddim_steps=4, checkpoint_every=100, seed=1, steps=3, batch_size=2, lr=1e-2, train_method=method)
    return DistillConfig(**{**base, **overrides})


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def changed(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}


# --- what trains ---


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_text_encoder_only_leaves_the_unet_bit_identical(tiny_dirs, kind):
    pipe = load_pipeline(str(tiny_dirs[kind]))
    encoders = ["text_encoder"] + (["text_encoder_2"] if kind == "sdxl" else [])
    unet, tes = snapshot(pipe.unet), {e: snapshot(getattr(pipe, e)) for e in encoders}
    d = Distiller(pipe, CONCEPTS, config(retention=RETENTION))
    d.train(2)
    assert not changed(d.student, unet) and not changed(d.teacher, unet)
    assert set(d.student_text_encoders) == set(encoders)
    for e in encoders:  # every weight of every encoder trains, in the student and its EMA teacher
        assert changed(getattr(pipe, e), tes[e]) and changed(d.teacher_text_encoders[e], tes[e])
        assert sum(n.startswith(e + ".") for n in d.trained) == len(tes[e])
    assert not any(p.requires_grad for p in d.student.parameters())


def test_text_encoder_and_xattn_trains_both(sd1):
    unet, te = snapshot(sd1.unet), snapshot(sd1.text_encoder)
    d = Distiller(sd1, CONCEPTS, config("text_encoder+xattn"))
    d.train(2)
    assert changed(d.student, unet) and all("attn2" in n for n in changed(d.student, unet))
    assert changed(sd1.text_encoder, te)
    assert [n for n in d.trained if not n.startswith("text_encoder.")] == select_parameters(sd1.unet, "xattn")


def test_xattn_lr_scale_and_memory_options_with_the_text_encoder(sd1):
    d = Distiller(sd1, CONCEPTS, config("text_encoder+xattn", lr=1e-3, xattn_lr_scale=4.0, frozen_dtype="bf16",
                                        gradient_checkpointing=True))
    rest, xattn = d.optimizer.param_groups
    assert len(xattn["params"]) == len(select_parameters(sd1.unet, "xattn")) and xattn["lr"] == pytest.approx(4e-3)
    assert len(rest["params"]) == len(list(sd1.text_encoder.parameters())) and rest["lr"] == pytest.approx(1e-3)
    # Frozen UNet weights in bf16; the text encoder (all of it trains) stays fp32.
    assert d.student.conv_in.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in sd1.text_encoder.parameters())
    assert math.isfinite(d.train_step())


# --- the objective ---


def test_the_gradient_reaches_the_text_encoder_only_through_the_concept_prompt(sd1):
    d = Distiller(sd1, CONCEPTS, config())
    z, t = torch.randn(2, *latent_shape(sd1)), torch.tensor([500, 20])
    uncond = d.conditioner.empty(2)
    cond = d.encode_student(["a red circle", "something red"])
    assert not uncond.hidden_states.requires_grad and cond.hidden_states.requires_grad
    loss = sdd_loss(d.student, z, t, cond, uncond)
    grads = torch.autograd.grad(loss, d.student_params)
    assert any(g.abs().sum() > 0 for g in grads)

    # The same loss with "" encoded with gradient, then detached: the same gradient ...
    def prediction(prompts):
        return predict(d.student, z, t, d.conditioner.encode_with_grad(prompts))

    prompts = ["a red circle", "something red"]
    reference = F.mse_loss(prediction(prompts), prediction([""] * 2).detach())
    for g, r in zip(grads, torch.autograd.grad(reference, d.student_params), strict=True):
        torch.testing.assert_close(g, r)
    # ... and not the one of a target that lets the gradient through the empty prompt as well.
    both = F.mse_loss(prediction(prompts), prediction([""] * 2))
    assert any(not torch.allclose(g, b) for g, b in zip(grads, torch.autograd.grad(both, d.student_params),
                                                         strict=True))


def test_the_ema_teacher_holds_the_text_encoder_and_encodings_are_never_stale(sd1):
    base = snapshot(sd1.text_encoder)
    d = Distiller(sd1, CONCEPTS, config(ema_decay=0.9, retention=RETENTION))
    teacher = d.teacher_text_encoders["text_encoder"]
    assert teacher is not sd1.text_encoder and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert d.teacher_conditioner.text_encoders == {"text_encoder": teacher}
    assert d.base_conditioner.text_encoders == {"text_encoder": d.base_text_encoders["text_encoder"]}
    before = {c: c.encode(["a red circle"]).hidden_states for c in (d.conditioner, d.teacher_conditioner)}
    d.train(1)
    for name, p in teacher.named_parameters():
        torch.testing.assert_close(p, 0.9 * base[name] + 0.1 * dict(sd1.text_encoder.named_parameters())[name])
    for conditioner, old in before.items():  # the cache was cleared when the weights moved
        assert not torch.equal(conditioner.encode(["a red circle"]).hidden_states, old)
    with torch.no_grad():
        fresh = d.conditioner.encode_with_grad(["a red circle"]).hidden_states
    torch.testing.assert_close(d.conditioner.encode(["a red circle"]).hidden_states, fresh)
    # The base text encoder stays the untrained one.
    assert all(torch.equal(p, base[n]) for n, p in d.base_text_encoders["text_encoder"].named_parameters())


def test_the_adversary_pools_prompts_at_the_text_encoder_input(sd1):
    d = Distiller(sd1, CONCEPTS, config(batch_size=4, steps=4, retention=RETENTION,
                                        adversarial=ADVERSARY.model_copy(update={"every": 1})))
    tokenizer, embeddings = sd1.tokenizer, sd1.text_encoder.get_input_embeddings()
    d.train(2)  # an inversion, then a token prefix
    pool = d.adversary.state.pool
    assert pool and all(isinstance(p, InputPrompt) for p in pool)
    assert any(p.rows is not None for p in pool) and any(p.ids is not None for p in pool)
    assert sd1.tokenizer is tokenizer and sd1.text_encoder.get_input_embeddings() is embeddings
    erased = d.encode_student(["a red circle"] * 4)
    mixed = d.adversary.mix(erased)
    assert len(mixed) == 4 and mixed.hidden_states.requires_grad
    grads = torch.autograd.grad(mixed.hidden_states[2:].sum(), d.student_params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # through the student's text encoder
    d.adversary.cfg.jitter = 0.0
    d.rng.seed(0)
    first = d.adversary.mix(erased).hidden_states[2:].detach()
    d.train(3)
    d.rng.seed(0)
    assert not torch.equal(d.adversary.mix(erased).hidden_states[2:].detach(), first)  # re-encoded each time


def test_blend_needs_pooled_hidden_states(sd1):
    with pytest.raises(ConfigError, match="adversarial.blend"):
        Distiller(sd1, CONCEPTS, config(adversarial=ADVERSARY.model_copy(update={"blend": 0.5})))


# --- runs that survive, and their outputs ---


@pytest.mark.parametrize(("method", "extra"), [
    ("text_encoder", {"retention": RETENTION}),
    ("text_encoder", {"retention": RETENTION, "adversarial": ADVERSARY}),
    ("text_encoder+xattn", {"retention": RETENTION, "adversarial": ADVERSARY, "xattn_lr_scale": 4.0}),
])
def test_resume_after_interrupt_is_bit_identical(tiny_dirs, tmp_path, monkeypatch, method, extra):
    cfg = config(method, steps=6, batch_size=4, checkpoint_every=2, **extra)
    erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "straight", cfg)
    with interrupt_at_loss(monkeypatch, 4):
        erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "resumed", cfg)
    assert json.loads((tmp_path / "resumed/checkpoint/state.json").read_text())["step"] == 3
    erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "resumed", cfg, resume=True)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    state = load_file(str(tmp_path / "straight/checkpoint/state.safetensors"))
    assert any(k.startswith("student.text_encoder.") for k in state)
    assert any(k.startswith("teacher.text_encoder.") for k in state)


def test_a_checkpoint_of_another_text_encoder_is_refused(tiny_dirs, tmp_path):
    erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path, config(steps=1))
    meta = json.loads((tmp_path / "checkpoint/state.json").read_text())
    meta["base_text_encoders_sha256"] = {"text_encoder": "0" * 64}
    (tmp_path / "checkpoint/state.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="base text encoders"):
        erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path, config(steps=2), resume=True)


@pytest.mark.parametrize(("kind", "method"), [("sd1", "text_encoder"), ("sd1", "text_encoder+xattn"),
                                              ("sdxl", "text_encoder")])
def test_patch_reproduces_the_saved_model(tiny_dirs, tmp_path, kind, method):
    result = erase(str(tiny_dirs[kind]), CONCEPTS, tmp_path, config(method, steps=2))
    erased = load_pipeline(str(result.model_dir))
    patched = apply_patch(load_pipeline(str(tiny_dirs[kind])), result.patch)
    base = load_pipeline(str(tiny_dirs[kind]))
    encoders = ["text_encoder"] + (["text_encoder_2"] if kind == "sdxl" else [])
    for component in ["unet", *encoders]:
        a, b = getattr(erased, component).state_dict(), getattr(patched, component).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), component
    for e in encoders:  # the saved model holds the erased text encoders
        assert weights_hash(getattr(erased, e)) != weights_hash(getattr(base, e))
    patch = load_file(str(result.patch))
    assert {n.split(".")[0] for n in patch if n.startswith("text_encoder")} == set(encoders)
    assert all(n.startswith("text_encoder") or "attn2" in n for n in patch)

    noise = torch.randn(1, *latent_shape(base), generator=torch.Generator().manual_seed(0))
    images = [p("a red circle", num_inference_steps=2, latents=noise.clone(), output_type="latent").images
              for p in (erased, patched)]
    assert torch.equal(*images)

    manifest = json.loads(result.manifest.read_text())
    components = manifest["trained_parameters"]["components"]
    assert set(components) == set(encoders) | ({"unet"} if method == "text_encoder+xattn" else set())
    assert manifest["base_model"]["text_encoders_sha256"] == {e: weights_hash(getattr(base, e)) for e in encoders}


# --- bad input ---


def test_a_pipeline_without_a_text_encoder_is_a_one_line_error(sd1):
    sd1.text_encoder = None
    with pytest.raises(ConfigError, match="train_method") as err:
        Distiller(sd1, CONCEPTS, config())
    assert "\n" not in str(err.value) and "xattn_out" in str(err.value)
    with pytest.raises(ConfigError, match="train_method"):
        select_parameters(sd1.unet, "text_encoder")
