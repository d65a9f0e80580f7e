"""Tests for the SDD engine (sdd.erasure): the maths, parameter selection, checkpoints, outputs, CLI."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from helpers import assert_same_run, interrupt_at_loss
from safetensors.torch import load_file
from typer.testing import CliRunner

import sdd.erasure.engine as engine
from sdd.cli import app
from sdd.config import ConfigError, DistillConfig
from sdd.erasure import (
    Distiller,
    NonFiniteLossError,
    apply_patch,
    ddim_step,
    ema_update,
    erase,
    pool_phases,
    sample_latents,
    sdd_loss,
    select_parameters,
    timestep_bin,
)
from sdd.models import Conditioner, SamplingGrid, latent_shape, load_pipeline, predict
from sdd.prompts import Concept, default_concepts

CONCEPTS = [Concept("red", ["a red circle", "something red"]),
            Concept("triangle", ["a triangle", "a wedge"])]
FAST = dict(ddim_steps=4, checkpoint_every=100, seed=1)


def fast_config(**overrides) -> DistillConfig:
    return DistillConfig(**{**FAST, **overrides})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CountingUNet(torch.nn.Module):
    """Wraps a UNet and records the batch size and grad mode of every call."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.calls = unet, []

    def forward(self, sample, t, **kwargs):
        self.calls.append((sample.shape[0], torch.is_grad_enabled()))
        return self.unet(sample, t, **kwargs)


# --- the maths ---


def test_timestep_bins_partition_the_schedule_and_hold_the_ddim_timesteps():
    n, total = 50, 1000
    assert timestep_bin(0, n, total) == (980, 1000)
    assert timestep_bin(n - 1, n, total) == (0, 20)
    assert all(timestep_bin(k, n, total)[1] == timestep_bin(k - 1, n, total)[0] for k in range(1, n))
    scheduler = DDIMScheduler(num_train_timesteps=total, steps_offset=1)
    scheduler.set_timesteps(n)
    for k, t in enumerate(scheduler.timesteps.tolist()):  # the latent after k steps sits at timesteps[k]
        lo, hi = timestep_bin(k, n, total)
        assert lo <= t < hi


def test_timestep_bin_is_never_empty():
    assert timestep_bin(3, 2000, 1000)[1] > timestep_bin(3, 2000, 1000)[0]


def test_k0_gives_pure_noise_without_calling_the_unet(sd1):
    unet = CountingUNet(sd1.unet)
    cond = Conditioner(sd1)
    grid = SamplingGrid(sd1, 5, latent_shape(sd1), "cpu")
    noise = torch.randn(2, *latent_shape(sd1))
    out = sample_latents(unet, grid, noise, [0, 0], cond.encode(["a", "b"]), cond.empty(2), 3.0)
    assert torch.equal(out, noise) and unet.calls == []


def test_k_steps_means_exactly_k_scheduler_steps(sd1, monkeypatch):
    cond = Conditioner(sd1)
    grid = SamplingGrid(sd1, 5, latent_shape(sd1), "cpu")
    scheduler = grid.scheduler
    steps_seen = []
    real_step = scheduler.step

    def spy(model_output, t, sample, **kw):
        steps_seen.append((int(t), sample.shape[0]))
        return real_step(model_output, t, sample, **kw)

    monkeypatch.setattr(scheduler, "step", spy)
    unet = CountingUNet(sd1.unet)
    noise = torch.randn(3, *latent_shape(sd1))
    ks = [3, 0, 1]
    batched = sample_latents(unet, grid, noise, ks, cond.encode(["x", "y", "z"]), cond.empty(3), 3.0)
    ts = scheduler.timesteps.tolist()
    # Trajectories advance in lockstep: 2 active at step 0, then only the k=3 one.
    assert steps_seen == [(ts[0], 2), (ts[1], 1), (ts[2], 1)]
    assert [b for b, _ in unet.calls] == [4, 2, 2]  # each with its unconditional twin
    assert torch.equal(batched[1], noise[1])
    for b, k in enumerate(ks):  # batching does not change any trajectory
        alone = sample_latents(sd1.unet, grid, noise[b:b + 1], [k], cond.encode([["x", "y", "z"][b]]),
                               cond.empty(1), 3.0)
        torch.testing.assert_close(batched[b:b + 1], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_full_trajectory_matches_the_diffusers_pipeline(tiny_dirs, kind):
    """N teacher steps = the pipeline's own guided DDIM sampling (conditioning, CFG, v-prediction)."""
    pipe = load_pipeline(str(tiny_dirs[kind]))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    cond = Conditioner(pipe)
    noise = torch.randn(1, *latent_shape(pipe), generator=torch.Generator().manual_seed(0))
    expected = pipe("a red circle", num_inference_steps=4, guidance_scale=3.0, latents=noise.clone(),
                    output_type="latent").images
    grid = SamplingGrid(pipe, 4, latent_shape(pipe), "cpu")
    ours = sample_latents(pipe.unet, grid, noise, [4], cond.encode(["a red circle"]), cond.empty(1), 3.0)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_gradient_flows_only_through_the_conditional_branch(sd1):
    unet = CountingUNet(sd1.unet)
    sd1.unet.requires_grad_(True)
    cond = Conditioner(sd1)
    z, t = torch.randn(2, *latent_shape(sd1)), torch.tensor([500, 20])
    c, u = cond.encode(["a red circle", "a wedge"]), cond.empty(2)

    loss = sdd_loss(unet, z, t, c, u)
    assert [grad for _, grad in unet.calls] == [False, True]  # target under no_grad, prediction with grad
    grads = torch.autograd.grad(loss, list(sd1.unet.parameters()), allow_unused=True)

    target = predict(sd1.unet, z, t, u).detach()
    reference = F.mse_loss(predict(sd1.unet, z, t, c), target)
    ref_grads = torch.autograd.grad(reference, list(sd1.unet.parameters()), allow_unused=True)
    for g, r in zip(grads, ref_grads, strict=True):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r)

    both = F.mse_loss(predict(sd1.unet, z, t, c), predict(sd1.unet, z, t, u))
    both_grads = torch.autograd.grad(both, list(sd1.unet.parameters()), allow_unused=True)
    assert any(g is not None and b is not None and not torch.allclose(g, b)
               for g, b in zip(grads, both_grads, strict=True))


def test_ema_update_formula():
    teacher = [torch.tensor([1.0, 2.0]), torch.tensor([[4.0]])]
    student = [torch.tensor([3.0, 0.0]), torch.ones(1, 1)]
    ema_update(teacher, student, 0.9)
    torch.testing.assert_close(teacher[0], torch.tensor([0.9 * 1 + 0.1 * 3, 0.9 * 2]))
    torch.testing.assert_close(teacher[1], torch.tensor([[0.9 * 4 + 0.1]]))


def test_teacher_is_a_frozen_ema_of_the_student(sd1):
    base = {n: p.detach().clone() for n, p in sd1.unet.named_parameters()}
    d = Distiller(sd1, CONCEPTS, fast_config(lr=1e-3, ema_decay=0.9))
    assert not d.teacher.training and not any(p.requires_grad for p in d.teacher.parameters())
    teacher = dict(d.teacher.named_parameters())
    student = dict(d.student.named_parameters())
    for name in student:  # frozen parameters are shared, trained ones are separate copies
        assert (teacher[name].data_ptr() == student[name].data_ptr()) == (name not in d.trained)
    assert [id(g["params"][0]) for g in d.optimizer.param_groups] == [id(d.student_params[0])]
    assert len(d.optimizer.param_groups[0]["params"]) == len(d.trained)
    d.train_step()
    for name in d.trained:
        torch.testing.assert_close(teacher[name], 0.9 * base[name] + 0.1 * student[name])


@pytest.mark.parametrize("method,selected", [
    ("xattn", lambda n: "attn2" in n), ("xattn_out", lambda n: "attn2.to_out" in n),
    ("selfattn", lambda n: "attn1" in n),
    ("noxattn", lambda n: "attn2" not in n), ("full", lambda n: True)])
def test_only_the_selected_parameters_change(sd1, method, selected):
    base = {n: p.detach().clone() for n, p in sd1.unet.named_parameters()}
    assert select_parameters(sd1.unet, method) == [n for n in base if selected(n)]
    d = Distiller(sd1, CONCEPTS, fast_config(train_method=method, lr=1e-2, ema_decay=0.5))
    for _ in range(2):
        d.train_step()
    for model in (d.student, d.teacher):
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, base[n])}
        assert changed and all(selected(n) for n in changed), method


def test_bf16_autocast_step(sd1):
    d = Distiller(sd1, CONCEPTS, fast_config(mixed_precision="bf16"))
    assert math.isfinite(d.train_step()) and d.student_params[0].dtype == torch.float32


def test_concept_schedules(sd1):
    d = Distiller(sd1, CONCEPTS, fast_config(batch_size=3, concept_schedule="iterative"))
    erased = [p for _ in range(2) for p in (d.draw_batch().erased_prompts, d.apply_update(0.0))[0]]
    owners = ["red" if p in CONCEPTS[0].prompts else "triangle" for p in erased]
    assert owners == ["red", "triangle"] * 3
    batch = Distiller(sd1, CONCEPTS, fast_config(batch_size=4, concept_schedule="composite")).draw_batch()
    assert batch.erased_prompts == batch.sampling_prompts
    for p in batch.sampling_prompts:
        first, second = p.split(", ")
        assert first in CONCEPTS[0].prompts and second in CONCEPTS[1].prompts
    batch = Distiller(sd1, CONCEPTS, fast_config(batch_size=8, concept_schedule="random",
                                                 sampler="reference")).draw_batch()
    assert all(p in CONCEPTS[0].prompts + CONCEPTS[1].prompts for p in batch.erased_prompts)
    assert all(0 <= k < 4 for k in batch.ks) and batch.noise.shape == (8, *latent_shape(sd1))


# --- the pool sampler ---


def test_reference_loop_is_unchanged(sd1):
    """The paper's loop gives the losses it gave before the pool existed (same draws, same maths)."""
    d = Distiller(sd1, CONCEPTS, fast_config(batch_size=3, steps=4, sampler="reference"))
    d.train(4)
    assert d.losses == pytest.approx([0.0029607617761939764, 0.004703887272626162, 0.00253083067946136,
                                      0.0043468838557600975], rel=1e-5)


@pytest.mark.parametrize("size,steps", [(8, 25), (3, 4), (5, 2), (1, 7)])
def test_pool_phases_are_staggered_and_each_slot_uniform(size, steps):
    for b in range(size):  # the offset is uniform, so each slot's step index is too
        assert sorted(pool_phases(o, size, steps)[b] for o in range(steps)) == list(range(steps))
    phases = pool_phases(0, size, steps)
    assert len(set(phases)) == min(size, steps)


def test_pool_cycles_every_slot_through_every_k(sd1):
    n, size = 4, 3
    d = Distiller(sd1, CONCEPTS, fast_config(batch_size=size, sampler="pool", ddim_steps=n))
    seen = [[] for _ in range(size)]
    for _ in range(2 * n):
        batch = d.draw_batch()
        for b, k in enumerate(batch.ks):
            seen[b].append(k)
        d.apply_update(d.forward_backward(batch), d.advance_pool(batch))
    for b in range(size):
        assert seen[b] == [(seen[b][0] + s) % n for s in range(2 * n)]  # one DDIM step per optimizer step
        assert sorted(seen[b][:n]) == list(range(n))  # so each k equally often


def test_passes_are_counted_per_loop(sd1):
    n, size = 4, 3
    ref = Distiller(sd1, CONCEPTS, fast_config(batch_size=size, sampler="reference", ddim_steps=n))
    batch = ref.draw_batch()
    ref.forward_backward(batch)
    assert ref.unet_passes == sum(2 * k for k in batch.ks) + 2 * size  # CFG steps + the loss's two passes

    pool = Distiller(sd1, CONCEPTS, fast_config(batch_size=size, sampler="pool", ddim_steps=n))
    pool.pool = pool.start_pool()
    assert pool.unet_passes == sum(2 * k for k in pool.pool.ks)  # the one-off warm-up
    for _ in range(n):
        before, batch = pool.unet_passes, pool.draw_batch()
        loss = pool.forward_backward(batch)
        pool.apply_update(loss, pool.advance_pool(batch))
        assert pool.unet_passes - before == 2 * size + 2 * sum(k < n - 1 for k in batch.ks)


def test_pool_steps_follow_the_reference_sampler(sd1):
    """Advancing a trajectory one ddim_step at a time (at mixed step indices) = sample_latents."""
    cond = Conditioner(sd1)
    scheduler = SamplingGrid(sd1, 5, latent_shape(sd1), "cpu")
    prompts = ["a red circle", "a wedge", "something red"]
    c, u = cond.encode(prompts), cond.empty(3)
    noise = torch.randn(3, *latent_shape(sd1), generator=torch.Generator().manual_seed(0))
    start = [0, 2, 1]
    z = sample_latents(sd1.unet, scheduler, noise, start, c, u, 3.0)
    for i in range(2):
        z = ddim_step(sd1.unet, scheduler, z, [k + i for k in start], c, u, 3.0)
    expected = sample_latents(sd1.unet, scheduler, noise, [k + 2 for k in start], c, u, 3.0)
    torch.testing.assert_close(z, expected, rtol=1e-4, atol=1e-5)


def test_pool_restarts_finished_trajectories_from_fresh_noise(sd1):
    n = 3
    d = Distiller(sd1, CONCEPTS, fast_config(batch_size=3, sampler="pool", ddim_steps=n))
    batch = d.draw_batch()
    assert sorted(batch.ks) == [0, 1, 2] and len(batch.restart_prompts) == 1 and len(batch.noise) == 1
    nxt = d.advance_pool(batch)
    last = batch.ks.index(n - 1)
    assert nxt.ks[last] == 0 and nxt.prompts[last] == batch.restart_prompts[0]
    assert torch.equal(nxt.latents[last], batch.noise[0])


def test_interrupt_while_starting_the_pool_resumes_identically(tiny_dirs, tmp_path, monkeypatch):
    config = fast_config(steps=3, batch_size=2, sampler="pool")
    erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "straight", config)
    real = engine.sample_latents

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "sample_latents", interrupted)
    with pytest.raises(KeyboardInterrupt):
        erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "resumed", config)
    assert json.loads((tmp_path / "resumed/checkpoint/state.json").read_text())["step"] == 0
    monkeypatch.setattr(engine, "sample_latents", real)
    erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "resumed", config, resume=True)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_a_checkpoint_resumes_only_with_the_same_sampler(tiny_dirs, tmp_path):
    erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path, fast_config(steps=1, sampler="pool"))
    with pytest.raises(ConfigError, match="sampler"):
        erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path, fast_config(steps=2, sampler="reference"), resume=True)


# --- memory options ---


def test_memory_options_train_and_save_the_exact_model(tiny_dirs, tmp_path):
    config = fast_config(steps=2, batch_size=2, gradient_checkpointing=True, frozen_dtype="bf16",
                         attention="sliced")
    pipe = load_pipeline(str(tiny_dirs["sd1"]))
    d = Distiller(pipe, CONCEPTS, config)
    frozen = [p for n, p in d.student.named_parameters() if "attn2" not in n]
    assert all(p.dtype == torch.bfloat16 for p in frozen) and d.student_params[0].dtype == torch.float32
    assert d.student.conv_in.weight.data_ptr() == d.teacher.conv_in.weight.data_ptr()  # still shared
    assert math.isfinite(d.train_step())

    result = erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path, config)
    erased = load_pipeline(str(result.model_dir))
    patched = apply_patch(load_pipeline(str(tiny_dirs["sd1"])), result.patch)
    for (name, a), (_, b) in zip(erased.unet.named_parameters(), patched.unet.named_parameters(), strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b), name


@pytest.mark.parametrize("attention", ["sdpa", "sliced", "eager"])
def test_attention_choices_agree(sd1, attention):
    config = fast_config(batch_size=2, attention=attention, sampler="reference")
    base = Distiller(copy.deepcopy(sd1), CONCEPTS, fast_config(batch_size=2, sampler="reference"))
    other = Distiller(sd1, CONCEPTS, config)
    assert other.train_step() == pytest.approx(base.train_step(), rel=1e-4)


def test_cosine_schedule_decays_the_lr_to_zero_by_the_last_step(tiny_dirs, tmp_path):
    config = fast_config(steps=4, batch_size=1, checkpoint_every=4, lr=1e-3, lr_schedule="cosine")
    erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "run", config)
    state = json.loads((tmp_path / "run/checkpoint/state.json").read_text())
    assert state["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert state["lr_scheduler"]["last_epoch"] == 4 and state["lr_scheduler"]["base_lrs"] == [1e-3]


def test_xattn_lr_scale_gives_the_cross_attention_its_own_lr(sd1):
    d = Distiller(sd1, CONCEPTS, fast_config(train_method="full", lr=1e-3, xattn_lr_scale=4.0))
    rest, xattn = d.optimizer.param_groups
    n_xattn = sum("attn2" in n for n in d.trained)
    assert 0 < n_xattn < len(d.trained) and len(xattn["params"]) == n_xattn
    assert len(rest["params"]) == len(d.trained) - n_xattn
    assert rest["lr"] == pytest.approx(1e-3) and xattn["lr"] == pytest.approx(4e-3)
    # Only cross-attention trained: nothing to scale apart, one group at the configured lr.
    only = Distiller(sd1, CONCEPTS, fast_config(train_method="xattn", lr=1e-3, xattn_lr_scale=4.0))
    assert [g["lr"] for g in only.optimizer.param_groups] == [pytest.approx(1e-3)]


def test_bf16_frozen_weights_need_bf16_compute():
    with pytest.raises(ValueError, match="frozen_dtype"):
        DistillConfig(frozen_dtype="bf16", mixed_precision="no")


def test_concept_prompts_default_to_the_name():
    assert Concept("nudity").prompts == ["nudity"]
    with pytest.raises(ConfigError):
        Concept(" ")


# --- runs that survive ---


def _tensors(path):
    return load_file(str(path))


@pytest.mark.parametrize(("sampler", "lr_schedule", "extra"), [
    ("pool", "constant", {}), ("reference", "constant", {}), ("pool", "cosine", {}),
    ("pool", "cosine", {"train_method": "full", "xattn_lr_scale": 4.0}),  # two optimizer groups
])
def test_resume_after_interrupt_is_bit_identical(tiny_dirs, tmp_path, monkeypatch, sampler, lr_schedule, extra):
    config = fast_config(steps=8, batch_size=2, checkpoint_every=3, sampler=sampler, lr_schedule=lr_schedule,
                         **extra)
    erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "straight", config)

    # Interrupt in the middle of step 5, after its random draws and its teacher sampling.
    with interrupt_at_loss(monkeypatch, 5):
        erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "resumed", config)
    assert json.loads((tmp_path / "resumed/checkpoint/state.json").read_text())["step"] == 4
    assert not (tmp_path / "resumed/patch.safetensors").exists()
    erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "resumed", config, resume=True)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_interrupt_between_steps_and_resume_with_more_steps(tiny_dirs, tmp_path):
    erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "straight", fast_config(steps=4))
    assert "pool.latents" in _tensors(tmp_path / "straight/checkpoint/state.safetensors")  # the default

    def stop_at_2(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "resumed", fast_config(steps=3), on_step=stop_at_2)
    erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "resumed", fast_config(steps=3), resume=True)
    erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path / "resumed", fast_config(steps=4), resume=True)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_checkpoint_guards(tiny_dirs, tmp_path):
    erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path, fast_config(steps=1))
    with pytest.raises(ConfigError, match="--resume"):
        erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path, fast_config(steps=2))
    with pytest.raises(ConfigError, match="lr"):
        erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path, fast_config(steps=2, lr=1e-3), resume=True)
    with pytest.raises(ConfigError, match="concepts"):
        erase(str(tiny_dirs["sd1"]), CONCEPTS[:1], tmp_path, fast_config(steps=2), resume=True)
    with pytest.raises(ConfigError, match="base unet"):
        erase(str(tiny_dirs["sd2"]), CONCEPTS, tmp_path, fast_config(steps=2), resume=True)


def test_non_finite_loss_raises_and_keeps_the_last_checkpoint(tiny_dirs, tmp_path, monkeypatch):
    calls, real_loss = [], engine.sdd_loss

    def diverging(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(engine, "sdd_loss", diverging)
    with pytest.raises(NonFiniteLossError, match="nan at step 4; last good checkpoint: step 2"):
        erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path, fast_config(steps=6, checkpoint_every=2))
    meta = json.loads((tmp_path / "checkpoint/state.json").read_text())
    assert meta["step"] == 2
    assert all(map(lambda x: x == x, _tensors(tmp_path / "checkpoint/state.safetensors")["loss"].tolist()))
    assert not (tmp_path / "patch.safetensors").exists()


# --- outputs ---


def test_outputs_and_patch_reproduce_the_erased_model(tiny_dirs, tmp_path):
    result = erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path, fast_config(steps=3, lr=1e-3))
    erased = load_pipeline(str(result.model_dir)).unet.state_dict()
    patched = apply_patch(load_pipeline(str(tiny_dirs["sd1"])), result.patch).unet.state_dict()
    base = load_pipeline(str(tiny_dirs["sd1"])).unet.state_dict()
    assert erased.keys() == patched.keys()
    assert all(torch.equal(erased[k], patched[k]) for k in erased)
    assert any(not torch.equal(erased[k], base[k]) for k in erased)
    assert set(_tensors(result.patch)) == {n for n in base if "attn2" in n}

    manifest = json.loads(result.manifest.read_text())
    assert manifest["steps"] == 3 and manifest["config"]["lr"] == 1e-3
    assert [c["name"] for c in manifest["concepts"]] == ["red", "triangle"]
    assert len(manifest["concepts_sha256"]) == 64 and len(manifest["base_model"]["unet_sha256"]) == 64
    assert manifest["base_model"]["path"] == str(tiny_dirs["sd1"])
    assert {"torch", "diffusers", "transformers"} <= manifest["versions"].keys()
    lines = (tmp_path / "loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss" and len(lines) == 4
    assert manifest["loss"]["last"] == float(lines[-1].split(",")[1])


def test_patch_for_another_model_is_refused(tiny_dirs, tmp_path):
    result = erase(str(tiny_dirs["sd1"]), CONCEPTS, tmp_path, fast_config(steps=1))
    with pytest.raises(ConfigError, match="does not fit"):
        apply_patch(load_pipeline(str(tiny_dirs["sdxl"])), result.patch)


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_each_architecture_trains(tiny_dirs, tmp_path, kind):
    result = erase(str(tiny_dirs[kind]), CONCEPTS, tmp_path, fast_config(steps=2, batch_size=2, lr=1e-3))
    assert result.steps == 2 and result.final_loss > 0
    reloaded = load_pipeline(str(result.model_dir))
    base = load_pipeline(str(tiny_dirs[kind]))
    assert type(reloaded) is type(base)
    assert reloaded.scheduler.config.prediction_type == base.scheduler.config.prediction_type


# --- CLI ---


def test_cli_erase(tiny_dirs, tmp_path):
    runner = CliRunner()
    (tmp_path / "distill.yaml").write_text("ddim_steps: 4\nbatch_size: 2\n")
    args = ["erase", "--model", str(tiny_dirs["sd1"]), "--concept", "red", "--out", str(tmp_path / "out"),
            "--steps", "2", "--config", str(tmp_path / "distill.yaml")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out/model/model_index.json").exists()
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["config"]["ddim_steps"] == 4 and manifest["steps"] == 2
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and again.stderr.strip().count("\n") == 0 and "--resume" in again.stderr
    assert runner.invoke(app, [*args, "--resume"]).exit_code == 0


@pytest.mark.parametrize("extra,message", [
    (["--model", "/no/such/dir"], "no such folder"),
    (["--model", "{tiny}", "--steps", "0"], "steps"),
    (["--model", "{tiny}", "--config", "/no/such.yaml"], "file not found"),
])
def test_cli_user_errors_are_one_line(tiny_dirs, tmp_path, extra, message):
    extra = [a.replace("{tiny}", str(tiny_dirs["sd1"])) for a in extra]
    result = CliRunner().invoke(app, ["erase", "--concept", "red", "--out", str(tmp_path), *extra])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and result.stderr.strip().count("\n") == 0


def test_default_concepts_for_the_toy_world():
    concepts = default_concepts("toy", ["red"])
    assert concepts[0].prompts == ["a red shape", "something red", "a crimson shape", "something crimson"]
    assert not any("scarlet" in p for p in concepts[0].prompts)  # held out for evaluation
    with pytest.raises(ConfigError):
        default_concepts("toy", ["teal"])
    assert default_concepts("org/model", ["nudity"])[0].prompts == ["nudity"]


def test_gpu_bench_dry_run_starts():
    """bench/gpu.sh --dry-run: the GPU bench's every row, with tiny configs on the CPU."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "bench/gpu.py", "--dry-run"], cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout[done.stdout.index("| run |"):]
    assert table.count("\n| SDD ") == 5 and table.count("\n| generation") == 2


def test_cli_erase_without_model_takes_the_active_concept_sets_base_model(tiny_dirs, tmp_path, monkeypatch):
    import yaml

    (tmp_path / "params").mkdir()
    (tmp_path / "params/concepts.yaml").write_text(yaml.safe_dump(
        {"active": "tiny", "sets": {"tiny": {"base_model": str(tiny_dirs["sd1"]), "concepts": ["red"]}}}))
    (tmp_path / "distill.yaml").write_text("ddim_steps: 2\nbatch_size: 2\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["erase", "--concept", "red", "--out", "out", "--steps", "1",
                                      "--config", "distill.yaml"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out/manifest.json").read_text())["base_model"]["model"] == str(tiny_dirs["sd1"])
