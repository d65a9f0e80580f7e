"""``params/registry.yaml``: experiment tracking, the model registry and its promotion guard (:mod:`sdd.registry`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from sdd.config.common import PARAMS_DIR, _Strict, load_model

#: Where the local MLflow store lives when no tracking server is configured (gitignored).
LOCAL_STORE_DIR = Path(".sdd")


class PostPromotionCheckConfig(_Strict):
    """The check run after a promotion (``promoted-check``, :mod:`sdd.registry.check`)."""

    samples: int = Field(16, ge=1, le=10000, description="Evaluation rows redrawn per concept and of the "
                                                         "benign prompts (a seeded sample).")
    seed: int = Field(0, ge=0, description="Seed of the sample of rows (not of the images: rows keep theirs).")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence of the whole check (its intervals "
                                                            "are Bonferroni-adjusted).")
    redteam: bool = Field(True, description="Rerun the red team (params/redteam.yaml) and compare its union "
                                            "attack success (minutes on CPU).")


class GuardConfig(_Strict):
    """The promotion guard (:mod:`sdd.registry.guard`, :mod:`sdd.registry.receiver`) and its reconcile."""

    host: str = Field("127.0.0.1", min_length=1, description="Address the guard's webhook receiver binds to.")
    port: int = Field(5055, ge=1, le=65535, description="Port of the webhook receiver.")
    url: str | None = Field(None, description="URL MLflow posts the webhook to; None = http://<host>:<port>/webhook.")
    max_age_s: int = Field(300, ge=10, description="A delivery signed longer ago than this is refused "
                                                   "(replay protection).")
    revert_on_check: bool = Field(False, description="Whether `sdd models --check` and the re-erase flow move a "
                                                     "violating protected alias back (else they only report it).")
    fail_on_violation: bool = Field(True, description="Whether the re-erase flow ends Failed on a violation "
                                                      "(else it logs a warning).")

    @property
    def webhook_url(self) -> str:
        return self.url or f"http://{self.host}:{self.port}/webhook"


class RegistryConfig(_Strict):
    """Where erasure runs are tracked and erased models registered (``sdd register`` / ``promote``).

    The tracking URI is resolved as: explicit argument (``--tracking-uri``) > ``$MLFLOW_TRACKING_URI``
    > ``tracking_uri`` here > a local SQLite store ``sqlite:///<project>/.sdd/mlflow.db``.
    Credentials (``AWS_*``, ``MLFLOW_TRACKING_TOKEN``...) come from the environment only.
    """

    tracking_uri: str | None = Field(None, description="MLflow tracking URI (server URL or sqlite:///...); "
                                                       "None = $MLFLOW_TRACKING_URI, else the local store.")
    registry_uri: str | None = Field(None, description="Model registry URI; None = the tracking URI.")
    experiment: str = Field("sdd-erasure", min_length=1, description="MLflow experiment of erasure runs.")
    model_name: str = Field("sdd-erased", min_length=1, description="Registered model name.")
    candidate_alias: str = Field("candidate", min_length=1,
                                 description="Alias set on a new version whose gates all passed.")
    production_alias: str = Field("production", min_length=1, description="Default alias of `sdd promote`.")
    protected_aliases: list[str] = Field(["production"], description="Aliases only a version that passed its "
                                         "gates (or was forced with a reason) may hold: `sdd promote` and the "
                                         "promotion guard enforce it.")
    guard: GuardConfig = Field(default_factory=GuardConfig)
    artifact_location: str | None = Field(
        None, description="Artifact root for a new experiment; None = the server's (proxied) store, or "
                          ".sdd/artifacts next to a local SQLite store.")
    post_promotion_check: PostPromotionCheckConfig = Field(
        default_factory=PostPromotionCheckConfig, description="What `promoted-check` redraws and compares.")

    @field_validator("protected_aliases")
    @classmethod
    def _aliases_named(cls, v: list[str]) -> list[str]:
        if any(not a.strip() for a in v):
            raise ValueError("an empty alias name; list alias names, e.g. [production]")
        return v

    def default_tracking_uri(self, project: Path | None = None) -> str:
        """``sqlite:///<project>/.sdd/mlflow.db`` (project = the working directory by default)."""
        return f"sqlite:///{(Path(project or Path.cwd()) / LOCAL_STORE_DIR / 'mlflow.db').resolve()}"


def load_registry_config(path: Path = PARAMS_DIR / "registry.yaml",
                         overrides: dict[str, Any] | None = None) -> RegistryConfig:
    return load_model(RegistryConfig, path, overrides)

