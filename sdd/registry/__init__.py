"""Experiment tracking and the model registry (MLflow): log an erasure, register it, promote it.

This package is the only part of ``sdd`` that imports MLflow. Its modules, each readable top-down:

* :mod:`sdd.registry.store` -- where MLflow lives (tracking URI resolution, clients, the fluent
  API pointed at a store and restored, the local store's registration lock);
* :mod:`sdd.registry.inputs` -- the erasure and evaluation folders being registered, gate verdicts;
* :mod:`sdd.registry.tracking` -- 1. **track**: one MLflow run per erasure (:func:`log_erasure`);
* :mod:`sdd.registry.pyfunc` -- the model (:class:`ErasedDiffusionModel`), prompts and seeds in,
  base64 PNGs out;
* :mod:`sdd.registry.registration` -- 2. **register** (:func:`register`: track + register,
  idempotent, alias ``candidate`` only when every gate passed);
* :mod:`sdd.registry.promotion` -- 3. **promote** (:func:`promote`), list, :func:`load_model`, and
  the promotion rule (:func:`promotion_refusal`);
* :mod:`sdd.registry.check` -- 4. **check** after a promotion (:func:`~sdd.registry.check.check_promoted`:
  redraw a sample of the evaluation with ``models:/<name>@<alias>``, compare; imported on demand);
* :mod:`sdd.registry.guard` -- the **promotion guard**: the rule applied to alias moves made
  elsewhere (the MLflow UI), reverting the refused ones, and the reconcile (:func:`check_aliases`);
* :mod:`sdd.registry.receiver` -- the guard's webhook receiver (``python -m sdd.registry.receiver``).

Provenance (git, DVC, scrubbing secrets) is :mod:`sdd.provenance`, importable without MLflow; the
folder layout is :mod:`sdd.layout`; the errors are :mod:`sdd.errors`.

**Where it runs**: the tracking URI is ``--tracking-uri`` > ``$MLFLOW_TRACKING_URI`` >
``params/registry.yaml`` > a local SQLite store ``sqlite:///<project>/.sdd/mlflow.db`` (artifacts
in ``.sdd/artifacts``; no server). With a tracking server started with
``--artifacts-destination s3://...``, artifacts go through the server's proxied artifact store, so
clients need no bucket credentials. Credentials are read from the environment only (by MLflow and
boto3), never logged: the URI is not recorded, and every param and tag value is scrubbed of the
values of secret-looking environment variables before it is sent. **Artifact store down**: boto3
(``AWS_MAX_ATTEMPTS``, ``AWS_RETRY_MODE``) and MLflow's HTTP client
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``..._BACKOFF_FACTOR``) retry; when they give up, the run ends
``FAILED``, no version is created, and :class:`ArtifactUploadError` says so in one line.
"""

from sdd.errors import (
    ArtifactUploadError,
    ConcurrentPromotionError,
    PromotionRefused,
    RegistryError,
    RegistryInputError,
    RegistryUnavailable,
)
from sdd.provenance import dvc_info, git_info, scrub
from sdd.registry.guard import GuardOutcome, check_aliases, guard_promotion
from sdd.registry.inputs import (
    GATES_FAILED,
    GATES_PASSED,
    Erasure,
    Evaluation,
    GateSummary,
    read_erasure,
    read_evaluation,
    read_gates,
)
from sdd.registry.promotion import (
    Promotion,
    VersionRow,
    alias_refusals,
    alias_version,
    list_models,
    list_versions,
    load_model,
    promote,
    promotion_refusal,
)
from sdd.registry.pyfunc import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    RUNTIME_PACKAGES,
    ErasedDiffusionModel,
    decode_image,
    encode_image,
    model_signature,
    pip_requirements,
)
from sdd.registry.registration import (
    REGISTRATION_KEY_TAG,
    Registration,
    find_registration,
    register,
    register_erasure,
    registration_key,
    version_description,
)
from sdd.registry.store import Store, client_for, mlflow_at, resolve_store
from sdd.registry.tracking import ErasureRun, erasure_params, evaluation_metrics, log_erasure, provenance_tags

_mlflow_at = mlflow_at  # the name tests and older callers use

__all__ = [
    "DEFAULT_GUIDANCE", "DEFAULT_STEPS", "GATES_FAILED", "GATES_PASSED", "REGISTRATION_KEY_TAG", "RUNTIME_PACKAGES",
    "ArtifactUploadError", "ConcurrentPromotionError", "ErasedDiffusionModel", "Erasure", "ErasureRun",
    "Evaluation", "GateSummary", "Promotion", "PromotionRefused", "Registration", "RegistryError",
    "RegistryInputError", "RegistryUnavailable", "Store", "GuardOutcome", "check_aliases", "guard_promotion",
    "promotion_refusal", "alias_refusals", "VersionRow", "alias_version", "client_for", "decode_image", "dvc_info",
    "encode_image",
    "erasure_params",
    "evaluation_metrics", "find_registration", "git_info", "list_models", "list_versions", "load_model",
    "log_erasure", "mlflow_at", "model_signature", "pip_requirements", "promote", "provenance_tags",
    "read_erasure", "read_evaluation", "read_gates", "register", "register_erasure", "registration_key",
    "resolve_store", "scrub", "version_description",
]
