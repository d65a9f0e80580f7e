"""``params/registry.yaml``: experiment tracking, the model registry and its promotion guard (:mod:`sdd.registry`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from sdd.config.common import PARAMS_DIR, ConfigError, _Strict, load_model

#: How a model behind an alias ships (issue 31): ``production`` is served behind a prompt box (only text gets
#: in), ``public`` is released as weights (an attacker can invert and fine-tune it).
DEFAULT_ALIAS_THREAT_MODELS: dict[str, str] = {"production": "api", "public": "open-weights"}

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
    protected_aliases: list[str] = Field(["production", "public"], description="Aliases only a version that "
                                         "passed its gates (or was forced with a reason) may hold: `sdd promote` "
                                         "and the promotion guard enforce it.")
    alias_threat_models: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_ALIAS_THREAT_MODELS),
        description="How the model behind each alias ships: the threat model (params/gates.yaml "
                    "robustness.threat_models) whose verdict a version must pass to hold it, besides the "
                    "evaluation's own gates. An alias not listed needs every gate, every attack included; "
                    "the candidate alias, when not listed, needs the production alias's threat model.")
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

    @field_validator("alias_threat_models")
    @classmethod
    def _bound_aliases_named(cls, v: dict[str, str]) -> dict[str, str]:
        for alias, threat_model in v.items():
            if not alias.strip() or not threat_model.strip():
                raise ValueError(f"'{alias}: {threat_model}': name an alias and a threat model, e.g. production: api")
        return v

    def threat_model_of(self, alias: str) -> str | None:
        """The threat model a version must pass to hold ``alias``; None = every gate must pass.

        The candidate alias marks what may be promoted to production, so unless bound itself it
        follows the production alias's threat model.
        """
        if alias in self.alias_threat_models:
            return self.alias_threat_models[alias]
        if alias == self.candidate_alias:
            return self.alias_threat_models.get(self.production_alias)
        return None

    def protected_threat_models(self) -> dict[str, str | None]:
        """Each protected alias and the threat model it needs (None: every gate), for the guard."""
        return {alias: self.threat_model_of(alias) for alias in self.protected_aliases}

    def check_threat_models(self, known: Iterable[str]) -> None:
        """Every bound threat model is one params/gates.yaml defines (the two files are read apart)."""
        known = list(known)
        for alias, threat_model in self.alias_threat_models.items():
            if threat_model not in known:
                raise ConfigError(f"alias_threat_models.{alias}: unknown threat model '{threat_model}'; "
                                  f"params/gates.yaml robustness.threat_models defines {', '.join(known) or 'none'}")

    def default_tracking_uri(self, project: Path | None = None) -> str:
        """``sqlite:///<project>/.sdd/mlflow.db`` (project = the working directory by default)."""
        return f"sqlite:///{(Path(project or Path.cwd()) / LOCAL_STORE_DIR / 'mlflow.db').resolve()}"


def load_registry_config(path: Path = PARAMS_DIR / "registry.yaml",
                         overrides: dict[str, Any] | None = None) -> RegistryConfig:
    return load_model(RegistryConfig, path, overrides)


def load_checked_registry_config(path: Path = PARAMS_DIR / "registry.yaml") -> RegistryConfig:
    """:func:`load_registry_config`, its ``alias_threat_models`` checked against the threat models of the
    ``gates.yaml`` beside it (the defaults where there is none): what registering and promoting use."""
    from sdd.config.gates import GatesConfig, load_gates_config

    cfg = load_registry_config(path)
    gates_file = Path(path).parent / "gates.yaml"
    gates = load_gates_config(gates_file) if gates_file.is_file() else GatesConfig()
    cfg.check_threat_models(gates.robustness.threat_models)
    return cfg
