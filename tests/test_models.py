"""Tests for sdd.models: loading SD 1.x / 2.x / SDXL pipelines and the conditioning adapter."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from tiny_models import SAMPLE_SIZE

import sdd.toy
from sdd.config import ConfigError
from sdd.models import (
    Conditioner,
    Conditioning,
    autocast,
    latent_shape,
    load_pipeline,
    pipeline_class_name,
    predict,
    unet_weights_hash,
)

EXPECTED_CLASS = {"sd1": StableDiffusionPipeline, "sd2": StableDiffusionPipeline,
                  "sdxl": StableDiffusionXLPipeline}



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_load_pipeline_detects_architecture_and_freezes(tiny_dirs, kind):
    pipe = load_pipeline(str(tiny_dirs[kind]))
    assert type(pipe) is EXPECTED_CLASS[kind]
    assert pipe.device.type == "cpu" and pipe.unet.dtype == torch.float32
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            assert not module.training
            assert not any(p.requires_grad for p in module.parameters())
    assert pipe.sdd_source.pipeline_class == EXPECTED_CLASS[kind].__name__
    assert pipe.sdd_source.path == str(tiny_dirs[kind])


def test_sd2_keeps_v_prediction(tiny_dirs):
    pipe = load_pipeline(str(tiny_dirs["sd2"]))
    assert pipe.scheduler.config.prediction_type == "v_prediction"


def test_unsupported_pipeline_class_is_one_line_error(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    with pytest.raises(ConfigError, match="unsupported pipeline class WanPipeline") as e:
        load_pipeline(str(tmp_path))
    assert "\n" not in str(e.value)
    assert "StableDiffusion3Pipeline (SD 3/3.5)" in str(e.value) and "FluxPipeline (FLUX.1)" in str(e.value)


def test_folder_without_model_index_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no model_index.json"):
        load_pipeline(str(tmp_path))


def test_missing_path_that_is_no_hub_id_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        load_pipeline(str(tmp_path / "a" / "b" / "c"))


def test_unreadable_model_index(tmp_path):
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        pipeline_class_name(tmp_path)


def test_toy_model(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr(sdd.toy, "TOY_PIPELINE_DIR", tmp_path / "missing")
    with pytest.raises(ConfigError, match="sdd toy build"):
        load_pipeline("toy")
    monkeypatch.setattr(sdd.toy, "TOY_PIPELINE_DIR", tiny_dirs["sd1"])
    pipe = load_pipeline("toy")
    assert pipe.sdd_source.model == "toy" and isinstance(pipe, StableDiffusionPipeline)


def test_latent_shape(tiny_dirs):
    pipe = load_pipeline(str(tiny_dirs["sd1"]))
    assert latent_shape(pipe) == (4, SAMPLE_SIZE, SAMPLE_SIZE)
    assert latent_shape(pipe, resolution=32) == (4, 32 // pipe.vae_scale_factor, 32 // pipe.vae_scale_factor)


def test_autocast_is_full_precision_on_cpu():
    with autocast("cpu", "auto"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")


def test_unet_weights_hash_identifies_weights(tiny_dirs):
    a, b = load_pipeline(str(tiny_dirs["sd1"])).unet, load_pipeline(str(tiny_dirs["sd1"])).unet
    assert unet_weights_hash(a) == unet_weights_hash(b)
    with torch.no_grad():
        next(b.parameters())[0].flatten()[0] += 1
    assert unet_weights_hash(a) != unet_weights_hash(b)


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_sd_conditioning_matches_pipeline(tiny_dirs, kind):
    pipe = load_pipeline(str(tiny_dirs[kind]))
    cond = Conditioner(pipe)
    c = cond.encode(["a red circle", "something"])
    expected, _ = pipe.encode_prompt(["a red circle", "something"], "cpu", 1, False)
    torch.testing.assert_close(c.hidden_states, expected)
    for i, prompt in enumerate(["a red circle", "something"]):  # each encoded alone: the same bits in any batch
        alone, _ = pipe.encode_prompt([prompt], "cpu", 1, False)
        torch.testing.assert_close(c.hidden_states[i:i + 1], alone, rtol=0, atol=0)
    assert c.added == {} and c.shared == {}
    empty = cond.empty(3)
    assert len(empty) == 3
    torch.testing.assert_close(empty.hidden_states[2:], cond.encode([""]).hidden_states, rtol=0, atol=0)


def test_each_distinct_prompt_goes_through_the_text_encoder_once(tiny_dirs, monkeypatch):
    pipe = load_pipeline(str(tiny_dirs["sd1"]))
    cond = Conditioner(pipe)
    seen = []
    pipe.text_encoder.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    first = cond.encode(["a", "b", "a"])
    assert seen == [1, 1]
    again = cond.encode(["b", "a", "c"])
    assert seen == [1, 1, 1]  # only "c" is new
    torch.testing.assert_close(again.hidden_states[:2], first.hidden_states[[1, 0]], rtol=0, atol=0)
    monkeypatch.setattr(Conditioner, "CACHE_SIZE", 2)
    cond.encode(["d"])  # over the bound: the oldest ("a") goes, so it is encoded again
    cond.encode(["a"])
    assert seen == [1, 1, 1, 1, 1]


def test_sdxl_conditioning(tiny_dirs):
    pipe = load_pipeline(str(tiny_dirs["sdxl"]))
    cond = Conditioner(pipe)
    c = cond.encode(["a red circle", "a box"])
    hidden = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert c.hidden_states.shape[::2] == (2, hidden)
    assert c.added["text_embeds"].shape == (2, pipe.text_encoder_2.config.projection_dim)
    side = SAMPLE_SIZE * pipe.vae_scale_factor
    assert c.added["time_ids"].tolist() == [[side, side, 0, 0, side, side]] * 2
    empty = cond.empty(2)  # force_zeros_for_empty_prompt: SDXL's unconditional input is all zeros
    assert not empty.hidden_states.any() and not empty.added["text_embeds"].any()
    both = Conditioning.cat([c, empty])
    out = predict(pipe.unet, torch.randn(4, *latent_shape(pipe)), torch.tensor(10), both)
    assert out.shape == (4, *latent_shape(pipe))
