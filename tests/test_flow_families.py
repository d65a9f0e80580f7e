"""SD 3 / 3.5 and FLUX.1 (issue 32): loading, the velocity objective, the flow-matching teacher, what trains,
and erasure runs that resume bit for bit, on tiny random-weight pipelines built offline (tests/tiny_models.py)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_same_run, interrupt_at_loss
from safetensors.torch import load_file

from sdd.config import ConfigError, DistillConfig
from sdd.erasure import Distiller, apply_patch, erase, sdd_loss
from sdd.models import (
    Conditioner,
    SamplingGrid,
    TrainingNoise,
    denoiser,
    family,
    latent_shape,
    load_pipeline,
    predict,
    select_parameters,
)
from sdd.prompts import Concept

FLOW_KINDS = ["sd3", "sd35", "flux-dev", "flux-schnell"]
CONCEPTS = [Concept("red", ["a red circle", "something red"])]
RESOLUTION = 16  # pixels: Flux's native size (1024 px for the real model) would be 4096 tokens


@pytest.fixture(scope="module")
def flow_dirs(tiny_dirs):
    return {kind: tiny_dirs[kind] for kind in FLOW_KINDS}


def fast_config(**overrides) -> DistillConfig:
    values = dict(steps=4, batch_size=2, ddim_steps=4, checkpoint_every=100, seed=1, lr=1e-3, ema_decay=0.9,
                  resolution=RESOLUTION, train_method="attn")
    return DistillConfig(**{**values, **overrides})


# --- loading ---


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_loads_as_the_pipeline_class_in_eval_mode_and_frozen(flow_dirs, kind):
    pipe = load_pipeline(str(flow_dirs[kind]), device="cpu")
    assert type(pipe).__name__ == ("FluxPipeline" if kind.startswith("flux") else "StableDiffusion3Pipeline")
    assert family(pipe) == ("flux" if kind.startswith("flux") else "sd3")
    assert pipe.sdd_source.pipeline_class == type(pipe).__name__
    net = denoiser(pipe)
    assert net is pipe.transformer and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    if kind == "sd35":  # SD3.5's dual attention layer and qk-norm survived the round trip
        assert net.config.dual_attention_layers == [0] and net.config.qk_norm == "rms_norm"
    if kind == "flux-dev":
        assert net.config.guidance_embeds


# --- the teacher: the pipeline's own sampling, step for step ---


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_full_teacher_trajectory_is_the_pipelines_own_sampling(flow_dirs, kind):
    """N grid steps = the pipeline's sampling: its sigmas (SD3's shift, Flux's resolution-dependent mu),
    its conditioning, CFG for SD3, the embedded guidance for FLUX.1-dev, Flux's packed latents."""
    pipe = load_pipeline(str(flow_dirs[kind]), device="cpu")
    flux = family(pipe) == "flux"
    shape = latent_shape(pipe, RESOLUTION)
    assert len(shape) == (2 if flux else 3)
    noise = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    scale = 3.5 if flux else 3.0
    expected = pipe("a red circle", num_inference_steps=4, guidance_scale=scale, height=RESOLUTION, width=RESOLUTION,
                    latents=noise.clone(), output_type="latent").images
    cond = Conditioner(pipe, RESOLUTION, guidance=scale)
    grid = SamplingGrid(pipe, 4, shape, "cpu")
    ours = sample(pipe, grid, noise, [4], cond, None if flux else scale)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def sample(pipe, grid, noise, ks, cond, scale):
    from sdd.erasure import sample_latents

    return sample_latents(denoiser(pipe), grid, noise, ks, cond.encode(["a red circle"] * len(ks)),
                          cond.empty(len(ks)), scale)


def test_the_grid_steps_along_the_schedulers_sigmas(flow_dirs):
    """One Euler step from sigma_k to sigma_k+1 is x + (sigma_k+1 - sigma_k)·v, and the grid's sigmas
    are Flux's shifted ones: the first is 1, each below the last, the last 0."""
    pipe = load_pipeline(str(flow_dirs["flux-dev"]), device="cpu")
    grid = SamplingGrid(pipe, 4, latent_shape(pipe, RESOLUTION), "cpu")
    sigmas = grid.sigmas.tolist()
    assert len(sigmas) == 5 and sigmas[0] == pytest.approx(1.0) and sigmas[-1] == 0.0
    assert all(a > b for a, b in zip(sigmas, sigmas[1:], strict=False))
    unshifted = [1.0, 0.75, 0.5, 0.25]
    assert any(abs(s - u) > 1e-3 for s, u in zip(sigmas, unshifted, strict=False))  # mu moved them
    torch.testing.assert_close(grid.timesteps, grid.sigmas[:-1] * 1000)
    x, v = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    torch.testing.assert_close(grid.step(v, 1, x), x + (grid.sigmas[2] - grid.sigmas[1]) * v)
    assert grid.timestep_range(1) is None  # flow matching trains at the grid's own timestep


# --- the objective in velocity space ---


@pytest.mark.parametrize("kind", ["sd3", "flux-dev"])
def test_the_target_is_the_empty_prompt_velocity_under_stop_gradient_at_the_students_x_t(flow_dirs, kind):
    pipe = load_pipeline(str(flow_dirs[kind]), device="cpu")
    net = denoiser(pipe)
    params = [p for n, p in net.named_parameters() if n in set(select_parameters(net, "attn"))]
    for p in params:
        p.requires_grad_(True)
    cond = Conditioner(pipe, RESOLUTION)
    z = torch.randn(2, *latent_shape(pipe, RESOLUTION), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([750.0, 250.0])
    c, u = cond.encode(["a red circle", "something red"]), cond.empty(2)
    grads = torch.autograd.grad(sdd_loss(net, z, t, c, u), params)
    reference = F.mse_loss(predict(net, z, t, c), predict(net, z, t, u).detach())
    for g, r in zip(grads, torch.autograd.grad(reference, params), strict=True):
        torch.testing.assert_close(g, r)
    both = F.mse_loss(predict(net, z, t, c), predict(net, z, t, u))  # no stop-gradient: another gradient
    assert any(not torch.allclose(g, b) for g, b in zip(grads, torch.autograd.grad(both, params), strict=True))


def test_flux_dev_guidance_reaches_the_student_the_target_and_the_teacher(flow_dirs):
    pipe = load_pipeline(str(flow_dirs["flux-dev"]), device="cpu")
    seen = []
    hook = lambda module, args, kwargs: seen.append(kwargs["guidance"])  # noqa: E731
    d = Distiller(pipe, CONCEPTS, fast_config(flux_guidance=2.5, sampler="reference"))
    for net in (d.student, d.teacher):
        net.register_forward_pre_hook(hook, with_kwargs=True)
    d.train_step()
    assert seen and all(g is not None and torch.all(g == 2.5) for g in seen)
    assert d.guidance is None  # Flux samples with one pass: no classifier-free guidance
    # schnell has no guidance embedding: none is passed
    schnell = load_pipeline(str(flow_dirs["flux-schnell"]), device="cpu")
    assert "guidance" not in Conditioner(schnell, RESOLUTION).encode(["a"]).added


def test_an_anchor_prompt_replaces_the_empty_prompt_as_the_target(flow_dirs):
    pipe = load_pipeline(str(flow_dirs["flux-dev"]), device="cpu")
    d = Distiller(pipe, CONCEPTS, fast_config(anchor_prompt="a photo"))
    anchor = d.target_conditioning(2)
    torch.testing.assert_close(anchor.hidden_states, d.conditioner.encode(["a photo"] * 2).hidden_states)
    plain = Distiller(load_pipeline(str(flow_dirs["flux-dev"]), device="cpu"), CONCEPTS, fast_config())
    torch.testing.assert_close(plain.target_conditioning(1).hidden_states, plain.conditioner.empty(1).hidden_states)


def test_training_noise_is_the_straight_path_and_its_velocity(flow_dirs):
    noise = TrainingNoise(load_pipeline(str(flow_dirs["sd3"]), device="cpu"))
    assert noise.flow and noise.num_train_timesteps == 1000
    x0, eps, t = torch.ones(2, 3), torch.zeros(2, 3), torch.tensor([250, 1000])
    torch.testing.assert_close(noise.add_noise(x0, eps, t), torch.tensor([[0.75] * 3, [0.0] * 3]))
    torch.testing.assert_close(noise.target(x0, eps, t), -x0)


# --- what trains ---


@pytest.mark.parametrize("kind", ["sd3", "sd35", "flux-dev"])
def test_transformer_train_methods(flow_dirs, kind):
    net = denoiser(load_pipeline(str(flow_dirs[kind]), device="cpu"))
    context = select_parameters(net, "context")
    assert context and all(any(p in n for p in ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"))
                           for n in context)
    attn, attn_ff, full = (set(select_parameters(net, m)) for m in ("attn", "attn+ff", "full"))
    assert set(context) < attn < attn_ff < full
    assert any(".ff." in n for n in attn_ff - attn)
    if kind == "sd35":
        assert any(".attn2." in n for n in attn)  # the dual attention layer's second attention
    if kind == "flux-dev":
        assert any(n.startswith("single_transformer_blocks.") for n in attn)


def test_a_unet_method_on_a_transformer_is_one_line_naming_the_supported_ones(flow_dirs):
    pipe = load_pipeline(str(flow_dirs["sd3"]), device="cpu")
    with pytest.raises(ConfigError) as e:
        Distiller(pipe, CONCEPTS, fast_config(train_method="xattn_out"))
    message = str(e.value)
    assert "\n" not in message and "'xattn_out'" in message and "SD3Transformer2DModel" in message
    assert "context, attn, attn+ff, full" in message


# --- erasure runs ---


@pytest.mark.parametrize(("kind", "extra"), [
    ("sd3", {}), ("sd35", {"sampler": "reference"}), ("flux-dev", {"retention": {"prompts": ["a blue square"],
                                                                                 "targets": 2, "batch": 1}}),
    ("flux-schnell", {"train_method": "context", "adversarial": {
        "attacks": ["inversion", "tokens"], "every": 2, "inversion_steps": 2, "prefix_steps": 2, "prefix_tokens": 2,
        "targets": 2, "inversion_batch": 1}}),
])
def test_erase_resumes_bit_identically_and_the_patch_is_the_erased_model(flow_dirs, tmp_path, monkeypatch, kind,
                                                                           extra):
    config = fast_config(steps=5, checkpoint_every=2, **extra)
    base = str(flow_dirs[kind])
    erase(base, CONCEPTS, tmp_path / "straight", config)
    with interrupt_at_loss(monkeypatch, 4):
        erase(base, CONCEPTS, tmp_path / "resumed", config)
    assert json.loads((tmp_path / "resumed/checkpoint/state.json").read_text())["step"] == 3
    erase(base, CONCEPTS, tmp_path / "resumed", config, resume=True)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")

    manifest = json.loads((tmp_path / "straight/manifest.json").read_text())
    assert manifest["base_model"]["pipeline_class"] == ("FluxPipeline" if kind.startswith("flux")
                                                        else "StableDiffusion3Pipeline")
    assert set(manifest["trained_parameters"]["components"]) == {"transformer"}
    patch = load_file(str(tmp_path / "straight/patch.safetensors"))
    net = denoiser(load_pipeline(base, device="cpu"))
    assert set(patch) == set(select_parameters(net, config.train_method))
    patched = apply_patch(load_pipeline(base, device="cpu"), tmp_path / "straight/patch.safetensors")
    erased = load_pipeline(str(tmp_path / "straight/model"), device="cpu")
    ours, theirs = denoiser(patched).state_dict(), denoiser(erased).state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not all(torch.equal(v, net.state_dict()[k]) for k, v in theirs.items())


def test_the_in_loop_adversary_attacks_through_clip_and_t5(flow_dirs, tmp_path):
    """Inversion learns an embedding per text encoder (T5's too); the token prefix is T5 tokens that CLIP
    reads as text. A text-encoder method pools placeholder tokens of one vocabulary: refused in one line."""
    adversarial = {"attacks": ["inversion", "tokens"], "every": 1, "inversion_steps": 2, "prefix_steps": 2,
                   "prefix_tokens": 2, "targets": 2, "inversion_batch": 1}
    for kind in ("sd3", "flux-dev"):
        result = erase(str(flow_dirs[kind]), CONCEPTS, tmp_path / kind, fast_config(steps=3, adversarial=adversarial))
        summary = json.loads(result.manifest.read_text())["adversarial"]
        assert summary["attacks"] >= 2 and summary["pool"] >= 2
        assert summary["prefixes"] and not any("<sdd-" in p for p in summary["prefixes"])
    with pytest.raises(ConfigError, match="adversarial.attacks: 'tokens' with train_method 'text_encoder'") as e:
        Distiller(load_pipeline(str(flow_dirs["flux-dev"]), device="cpu"), CONCEPTS,
                  fast_config(train_method="text_encoder", adversarial=adversarial,
                              retention={"prompts": ["a blue square"], "targets": 2, "batch": 1}))
    assert "\n" not in str(e.value) and "use [inversion]" in str(e.value)


# --- everything downstream ---


@pytest.mark.parametrize("kind", ["sd3", "sd35", "flux-dev"])
def test_erase_evaluate_redteam_register_and_serve(flow_dirs, tmp_path, kind):
    """The chain the flows run, on a tiny SD3 / FLUX.1-dev: the registered model loads (models from code)
    with the erased transformer and draws."""
    import sys

    import mlflow
    import pandas as pd
    from helpers import GATES_OFF, toy_prompt_set
    from test_redteam import TINY, StubJudge

    from sdd import registry
    from sdd.config import EvalConfig, GatesConfig, RedteamConfig, RegistryConfig
    from sdd.evaluation import evaluate
    from sdd.redteam import fold_into_evaluation, run_redteam

    out, eval_dir = tmp_path / "erased", tmp_path / "eval"
    erase(str(flow_dirs[kind]), CONCEPTS, out, fast_config(steps=2))
    base, erased = load_pipeline(str(flow_dirs[kind]), device="cpu"), load_pipeline(str(out / "model"), device="cpu")
    prompts = toy_prompt_set(4)
    gates = GatesConfig.model_validate(GATES_OFF)
    evaluate(base, erased, prompts, StubJudge(0.0), EvalConfig(num_inference_steps=2, batch_size=4, height=RESOLUTION,
                                                                width=RESOLUTION, fid_features="none"),
             gates, eval_dir, progress=False)
    metrics = run_redteam(base, erased, prompts, StubJudge(0.0), RedteamConfig.model_validate(TINY),
                          eval_dir / "redteam", gates=gates.robustness, log=lambda line: None)
    fold_into_evaluation(eval_dir, metrics, eval_dir / "redteam")
    attacks = metrics["redteam"]["red"]["attacks"]
    assert attacks["concept_inversion"]["n"] > 0 and attacks["adversarial_tokens"]["n"] > 0

    cfg = RegistryConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="flow-families")
    reg = registry.register(out, eval_dir, cfg, name=f"sdd-{kind}")
    saved_path = list(sys.path)  # MLflow puts the model's copy of sdd first
    try:
        with registry._mlflow_at(registry.resolve_store(cfg)):
            model = mlflow.pyfunc.load_model(reg.model_uri)
        served = model.unwrap_python_model().pipe
        ours, theirs = denoiser(served).state_dict(), denoiser(erased).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
        images = model.predict(pd.DataFrame({"prompt": ["a red circle"], "seed": [0]}),
                               params={"num_inference_steps": 2})
    finally:
        sys.path[:] = saved_path
    assert len(images) == 1


def test_pez_on_sd3_searches_t5_tokens_and_clip_reads_them_as_text(flow_dirs):
    """CLIP and T5 have different vocabularies: the prefix is T5 tokens (placeholders in T5 only, with
    gradients), CLIP gets the text they decode to, and the prompts drawn and recorded are that text."""
    from test_redteam import StubJudge

    from sdd.config import AdvTokensConfig
    from sdd.prompts import PromptRow
    from sdd.redteam import attacks as A
    from sdd.tokens import pez_pairs

    pipe = load_pipeline(str(flow_dirs["sd3"]), device="cpu")
    assert pez_pairs(pipe) == [("tokenizer_3", "text_encoder_3")]
    rows = [PromptRow(prompt="a red circle", seed=0, concepts=["red"]),
            PromptRow(prompt="something red", seed=1, concepts=["red"])]
    seen, drawn = [], []
    real_encode, real_call = pipe.encode_prompt, type(pipe).__call__

    def spy_encode(prompt, prompt_2=None, prompt_3=None, **kwargs):
        as_list = lambda p: [p] if isinstance(p, str) else list(p)  # noqa: E731
        seen.append((as_list(prompt), as_list(prompt_3 or prompt)))
        return real_encode(prompt, prompt_2, prompt_3, **kwargs)

    pipe.encode_prompt = spy_encode
    latents = torch.randn(2, *latent_shape(pipe), generator=torch.Generator().manual_seed(0))
    ctx = A.AttackContext(pipe, "red", ["red"], rows, latents, StubJudge(2.0), num_inference_steps=1, seed=3)
    real_draw = ctx.draw
    ctx.draw = lambda prompts, rows, what=None: drawn.extend(prompts) or real_draw(prompts, rows, what)
    result = A.adversarial_tokens_attack(ctx, AdvTokensConfig(steps=2, check_every=2, tokens=2, batch_size=1))
    assert type(pipe).__call__ is real_call
    training = [(clip, t5) for clip, t5 in seen if any("<sdd-adv-" in p for p in t5)]
    assert training and all("<sdd-adv-" not in p for clip, _ in training for p in clip)
    assert drawn and all("<sdd-adv-" not in p for p in drawn)
    assert [p.split(" | ")[1] for p in result.prompts] == ["a red circle", "something red"]
    assert all(p.endswith(("a red circle", "something red")) for p in drawn)
    assert result.rows == [0, 1] and result.gradient_steps > 0
    assert any("T5" in note for note in result.notes)


@pytest.mark.parametrize("preset", ["sd3", "flux-dev"])
def test_the_presets_validate_and_run_on_the_tiny_pipelines(flow_dirs, tmp_path, preset):
    from sdd.config import load_model

    cfg = load_model(DistillConfig, f"params/presets/{preset}.yaml")
    small = cfg.model_copy(update={"steps": 2, "ddim_steps": 2, "resolution": RESOLUTION, "mixed_precision": "auto",
                                   "frozen_dtype": "fp32"})
    erase(str(flow_dirs[preset]), CONCEPTS, tmp_path / "out", small)
    assert (tmp_path / "out/patch.safetensors").is_file()
    assert (tmp_path / "out/lora.safetensors").is_file() == (cfg.train_method == "lora")


# --- the CLI ---


def test_cli_erases_a_flux_folder_and_names_a_method_it_lacks_in_one_line(flow_dirs, tmp_path):
    from typer.testing import CliRunner

    from sdd.cli import app

    (tmp_path / "flux.yaml").write_text(
        f"ddim_steps: 2\nbatch_size: 2\nresolution: {RESOLUTION}\ntrain_method: context\n")
    args = ["erase", "--model", str(flow_dirs["flux-schnell"]), "--concept", "red", "--steps", "2",
            "--config", str(tmp_path / "flux.yaml")]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out/manifest.json").read_text())["base_model"]["pipeline_class"] == "FluxPipeline"
    (tmp_path / "bad.yaml").write_text(f"resolution: {RESOLUTION}\ntrain_method: xattn\n")
    bad = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "bad")])
    last = bad.stderr.strip().splitlines()[-1]  # after the pipeline's loading bars
    assert bad.exit_code == 2 and last.startswith("error: train_method: 'xattn' is not a method for Flux")
    assert "context, attn, attn+ff, full" in last and "Traceback" not in bad.output


def test_text_encoder_erasure_trains_clip_and_t5_and_leaves_the_transformer(flow_dirs, tmp_path):
    retention = {"prompts": ["a blue square"], "targets": 2, "batch": 1}
    out = tmp_path / "te"
    erase(str(flow_dirs["sd3"]), CONCEPTS, out, fast_config(steps=2, train_method="text_encoder", lr=1e-2,
                                                            retention=retention))
    assert {k.split(".")[0] for k in load_file(str(out / "patch.safetensors"))} == \
        {"text_encoder", "text_encoder_2", "text_encoder_3"}  # CLIP-L, CLIP-G and T5
    base, erased = (load_pipeline(str(p), device="cpu") for p in (flow_dirs["sd3"], out / "model"))
    assert all(torch.equal(a, b) for a, b in zip(denoiser(base).state_dict().values(),
                                                 denoiser(erased).state_dict().values(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(base.text_encoder_3.state_dict().values(),
                                                     erased.text_encoder_3.state_dict().values(), strict=True))
