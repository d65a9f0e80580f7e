"""The registered model: an erased diffusers pipeline as an MLflow pyfunc, and how it is logged.

Artifacts are the erased pipeline folder (``model``), ``patch.safetensors`` (checked against the
loaded UNet at load time) and ``manifest.json``. Input: a DataFrame with a ``prompt`` column and an
optional integer ``seed`` column (missing seeds = the row position); params ``num_inference_steps``,
``guidance_scale`` (defaults: the evaluation's settings) and ``batch_size``. Output: columns
``prompt``, ``seed``, ``image`` -- the image as a base64-encoded PNG string (JSON-serialisable, so
the same model serves over REST; :func:`decode_image` turns it back into a PIL image). Each row has
its own CPU ``torch.Generator``, as in ``sdd evaluate``. The model carries ``sdd``'s own source
(``code_paths``) and pins sdd's runtime dependencies at the versions installed when it was logged.
It is logged as MLflow "models from code" (:mod:`sdd.registry.model_code`), not as a pickled object:
loading a registered version runs that source and unpickles nothing.
"""

from __future__ import annotations

import base64
import importlib.metadata
import io
import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

import sdd
from sdd.config import EvalConfig
from sdd.errors import RegistryInputError
from sdd.layout import LORA_FILE, MANIFEST_FILE, MODEL_DIR, PATCH_FILE
from sdd.registry.inputs import Erasure, Evaluation

MODEL_ARTIFACT_PATH = "model"  # name= of the logged pyfunc model
MODEL_CODE = Path(__file__).with_name("model_code.py")  # the model's definition ("models from code")
DEFAULT_STEPS = EvalConfig.model_fields["num_inference_steps"].default
DEFAULT_GUIDANCE = EvalConfig.model_fields["guidance_scale"].default
DEFAULT_BATCH = 4


#: Packages the pyfunc model needs at load time, pinned at their installed versions.
RUNTIME_PACKAGES = ("torch", "diffusers", "transformers", "safetensors", "pillow", "pandas", "numpy",
                    "pydantic", "pyyaml")


def encode_image(image) -> str:
    """A PIL image as a base64 PNG string (the ``image`` column of the model's output)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(data: str):
    """The inverse of :func:`encode_image`: a base64 PNG string -> an RGB PIL image."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        return im.convert("RGB")


def _seeds(model_input: pd.DataFrame) -> list[int]:
    """The ``seed`` column; a missing column or missing value is the row position."""
    if "seed" not in model_input:
        return list(range(len(model_input)))
    return [i if pd.isna(s) else int(s) for i, s in enumerate(model_input["seed"].tolist())]


class ErasedDiffusionModel(mlflow.pyfunc.PythonModel):
    """An erased diffusers pipeline as an MLflow pyfunc: prompts and seeds in, base64 PNGs out."""

    def load_context(self, context) -> None:
        from sdd.models import load_pipeline

        self.pipe = load_pipeline(context.artifacts["model"])
        self.manifest = json.loads(Path(context.artifacts["manifest"]).read_text(encoding="utf-8"))
        self._check_patch(context.artifacts["patch"])

    def _check_patch(self, path: str) -> None:
        """The pipeline must hold exactly the trained parameters of ``patch.safetensors`` (UNet, text encoders)."""
        import torch
        from safetensors.torch import load_file

        from sdd.models import patch_targets

        params = patch_targets(self.pipe)
        for name, value in load_file(path).items():
            ours = params.get(name)
            if ours is None or not torch.equal(ours.detach().cpu(), value.to(ours.dtype)):
                raise RegistryInputError(f"model artifact does not match patch.safetensors ({name})")

    def predict(self, context, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        import torch

        model_input = pd.DataFrame(model_input)
        if "prompt" not in model_input:
            raise RegistryInputError("input needs a 'prompt' column (and optionally 'seed')")
        params = params or {}
        steps = int(params.get("num_inference_steps") or DEFAULT_STEPS)
        guidance = float(params.get("guidance_scale") or DEFAULT_GUIDANCE)
        batch = max(1, int(params.get("batch_size") or DEFAULT_BATCH))
        prompts, seeds = [str(p) for p in model_input["prompt"].tolist()], _seeds(model_input)
        images = []
        for i in range(0, len(prompts), batch):
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[i:i + batch]]
            images += self.pipe(prompt=prompts[i:i + batch], generator=generators, num_inference_steps=steps,
                                guidance_scale=guidance, output_type="pil").images
        return pd.DataFrame({"prompt": prompts, "seed": seeds, "image": [encode_image(im) for im in images]})


def model_signature(num_inference_steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE,
                    batch_size: int = DEFAULT_BATCH) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("long", "seed", required=False)]),
        outputs=Schema([ColSpec("string", "prompt"), ColSpec("long", "seed"), ColSpec("string", "image")]),
        params=ParamSchema([ParamSpec("num_inference_steps", "long", num_inference_steps),
                            ParamSpec("guidance_scale", "double", guidance_scale),
                            ParamSpec("batch_size", "long", batch_size)]))


def _installed_version(package: str) -> str:
    return importlib.metadata.version(package).split("+")[0]  # drop local labels such as +cpu


def pip_requirements() -> list[str]:
    """sdd's runtime dependencies pinned at the installed versions (local labels dropped)."""
    return [f"{p}=={_installed_version(p)}" for p in RUNTIME_PACKAGES]


def _stage_code(tmp: Path) -> Path:
    """A copy of the ``sdd`` package's source (no caches, no toy assets) for ``code_paths``."""
    src = Path(sdd.__file__).parent
    dst = tmp / "sdd"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "assets"))
    return dst


def log_pyfunc(erasure: Erasure, evaluation: Evaluation | None):
    generation = (evaluation.metrics.get("generation") if evaluation else None) or {}
    signature = model_signature(int(generation.get("num_inference_steps") or DEFAULT_STEPS),
                                float(generation.get("guidance_scale") or DEFAULT_GUIDANCE))
    artifacts = {"model": str(erasure.out_dir / MODEL_DIR), "patch": str(erasure.out_dir / PATCH_FILE),
                 "manifest": str(erasure.out_dir / MANIFEST_FILE)}
    if (erasure.out_dir / LORA_FILE).is_file():  # train_method lora: the adapter ships with the version
        artifacts["lora"] = str(erasure.out_dir / LORA_FILE)
    metadata = {"concepts": erasure.concepts, "concepts_sha256": erasure.manifest.get("concepts_sha256"),
                "output": "DataFrame[prompt, seed, image=base64 PNG]"}
    with tempfile.TemporaryDirectory(prefix="sdd-code-") as tmp, warnings.catch_warnings():
        # An input example would make MLflow load the model and run it at log time: not for SD sizes.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_PATH, python_model=str(MODEL_CODE), artifacts=artifacts,
            code_paths=[str(_stage_code(Path(tmp)))], pip_requirements=pip_requirements(),
            signature=signature, metadata=metadata)
