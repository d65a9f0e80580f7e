"""train_method: lora (issue 32 items 3-4): a PEFT adapter trains, the outputs are the merged model and patch
as for every method, plus a diffusers LoRA file that ``pipe.load_lora_weights`` loads onto the base model."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_same_run, interrupt_at_loss
from safetensors.torch import load_file

from sdd.config import ConfigError, DistillConfig
from sdd.erasure import Distiller, apply_patch, erase
from sdd.models import Conditioner, denoiser, latent_shape, load_pipeline, predict
from sdd.prompts import Concept

CONCEPTS = [Concept("red", ["a red circle", "something red"])]
RESOLUTION = 16
KINDS = ["sd1", "sdxl", "sd3", "flux-dev"]


@pytest.fixture(scope="module")
def base_dirs(tiny_dirs):
    return {kind: tiny_dirs[kind] for kind in KINDS}


def lora_config(**overrides) -> DistillConfig:
    values = dict(steps=4, batch_size=2, ddim_steps=3, checkpoint_every=2, seed=1, lr=5e-2, ema_decay=0.5,
                  resolution=RESOLUTION, train_method="lora", lora={"rank": 2, "alpha": 4.0})
    return DistillConfig(**{**values, **overrides})


def predictions(pipe, prompts=("a red circle", "a blue square")):
    """The denoiser's outputs for fixed noise, timesteps and prompts."""
    cond = Conditioner(pipe, RESOLUTION).encode(list(prompts))
    z = torch.randn(len(prompts), *latent_shape(pipe, RESOLUTION), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([600, 300])
    with torch.no_grad():
        return predict(denoiser(pipe), z, t, cond)


@pytest.mark.parametrize("kind", KINDS)
def test_the_lora_file_loads_onto_the_base_model_and_draws_like_the_erased_one(base_dirs, tmp_path, kind):
    out = tmp_path / "out"
    erase(str(base_dirs[kind]), CONCEPTS, out, lora_config())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["lora"] == "lora.safetensors" and manifest["lora"]["rank"] == 2
    erased = load_pipeline(str(out / "model"), device="cpu")
    base = load_pipeline(str(base_dirs[kind]), device="cpu")
    before = predictions(base)
    # diffusers' own loader, onto the base model, from the file alone
    base.load_lora_weights(str(out), weight_name="lora.safetensors")
    keys = load_file(str(out / "lora.safetensors")).keys()
    assert keys and all(k.startswith(("unet.", "transformer.")) for k in keys)
    torch.testing.assert_close(predictions(base), predictions(erased), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(before, predictions(erased), atol=1e-5)  # the adapter changed something


@pytest.mark.parametrize("kind", ["sd1", "flux-dev"])
def test_a_lora_run_resumes_bit_identically_and_its_patch_is_the_merged_model(base_dirs, tmp_path, monkeypatch,
                                                                              kind):
    config = lora_config(steps=5)
    base = str(base_dirs[kind])
    erase(base, CONCEPTS, tmp_path / "straight", config)
    with interrupt_at_loss(monkeypatch, 4):
        erase(base, CONCEPTS, tmp_path / "resumed", config)
    erase(base, CONCEPTS, tmp_path / "resumed", config, resume=True)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    assert (tmp_path / "straight/lora.safetensors").read_bytes() == (tmp_path / "resumed/lora.safetensors").read_bytes()

    patch = load_file(str(tmp_path / "straight/patch.safetensors"))
    assert patch and not any("lora" in name for name in patch)  # merged weights, under the base names
    patched = apply_patch(load_pipeline(base, device="cpu"), tmp_path / "straight/patch.safetensors")
    erased = load_pipeline(str(tmp_path / "straight/model"), device="cpu")
    ours, theirs = denoiser(patched).state_dict(), denoiser(erased).state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_lora_targets_that_match_nothing_are_one_line(base_dirs):
    pipe = load_pipeline(str(base_dirs["sd1"]), device="cpu")
    with pytest.raises(ConfigError, match=r"^lora.targets: \['attn9.nothing'\] match no module") as e:
        Distiller(pipe, CONCEPTS, lora_config(lora={"targets": ["attn9.nothing"]}))
    assert "\n" not in str(e.value)


def test_the_default_targets_follow_the_family(base_dirs):
    for kind, expected in (("sd1", "attn2.to_k"), ("sd3", "attn.add_k_proj")):
        d = Distiller(load_pipeline(str(base_dirs[kind]), device="cpu"), CONCEPTS, lora_config())
        assert d.trained and all(".lora_" in n for n in d.trained)
        assert any(f"{expected}.lora_A" in n for n in d.trained)


def test_the_lora_file_is_registered_with_the_version(base_dirs, tmp_path):
    import sys

    import mlflow

    from sdd import registry
    from sdd.config import RegistryConfig

    out = tmp_path / "out"
    erase(str(base_dirs["sd1"]), CONCEPTS, out, lora_config(steps=2))
    cfg = RegistryConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="lora")
    reg = registry.register(out, None, cfg, name="sdd-lora")
    saved_path = list(sys.path)  # MLflow puts the model's copy of sdd first
    try:
        with registry._mlflow_at(registry.resolve_store(cfg)):
            local = mlflow.artifacts.download_artifacts(reg.model_uri, dst_path=str(tmp_path / "dl"))
            served = mlflow.pyfunc.load_model(reg.model_uri).unwrap_python_model().pipe
    finally:
        sys.path[:] = saved_path
    files = {p.name for p in (tmp_path / "dl").rglob("*.safetensors")}
    assert "lora.safetensors" in files, (local, files)
    found = next((tmp_path / "dl").rglob("lora.safetensors"))
    assert found.read_bytes() == (out / "lora.safetensors").read_bytes()
    base = load_pipeline(str(base_dirs["sd1"]), device="cpu")
    base.load_lora_weights(str(found.parent), weight_name="lora.safetensors")
    torch.testing.assert_close(predictions(base), predictions(served), rtol=1e-4, atol=1e-5)
