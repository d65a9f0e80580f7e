"""Where and how the local stack runs (:class:`StackConfig`), and its one user when authenticated
(:class:`StackAuth`)."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path

from sdd.config import LOCAL_STORE_DIR
from sdd.errors import ConfigError

STATE_DIR = LOCAL_STORE_DIR / "stack"
STATE_FILE = "stack.json"
POOLS = ("cpu", "gpu")
DEFAULT_CRON = "0 2 * * *"  # nightly re-erase check, UTC


@dataclass
class StackConfig:
    """Where and how the stack runs. Paths default to the project's ``.sdd/`` folder."""

    project: Path = field(default_factory=Path.cwd)
    state_dir: Path | None = None
    host: str = "127.0.0.1"
    prefect_port: int = 4200
    mlflow_port: int = 5000
    guard_port: int = 5055  # the promotion guard's webhook receiver
    guard: bool = True
    mlflow_db: Path | None = None
    mlflow_artifacts: Path | None = None
    # None: SQLite (PREFECT_HOME / mlflow_db). Otherwise a SQLAlchemy URL: postgresql+asyncpg://... for
    # Prefect (its engine is async), postgresql://... (psycopg2) for MLflow.
    prefect_db_url: str | None = None
    mlflow_backend_uri: str | None = None
    pools: tuple[str, ...] = POOLS
    gpu_concurrency: int = 1
    reerase_cron: str = DEFAULT_CRON
    deploy: bool = True
    env: dict[str, str] = field(default_factory=dict)  # extra environment for every process
    timeout_s: float = 240.0
    auth: StackAuth | None = None  # None: no authentication (fine on 127.0.0.1 only)

    def __post_init__(self):
        self.project = Path(self.project).resolve()
        self.state_dir = Path(self.state_dir or self.project / STATE_DIR).resolve()
        self.mlflow_db = Path(self.mlflow_db or self.project / LOCAL_STORE_DIR / "mlflow.db").resolve()
        self.mlflow_artifacts = Path(self.mlflow_artifacts
                                     or self.project / LOCAL_STORE_DIR / "artifacts").resolve()

    @property
    def prefect_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def guard_url(self) -> str:
        return f"http://{self.host}:{self.guard_port}"

    @property
    def mlflow_store_uri(self) -> str:
        """The MLflow server's backend store: ``mlflow_backend_uri``, else SQLite at ``mlflow_db``."""
        return self.mlflow_backend_uri or f"sqlite:///{self.mlflow_db}"


# --- authentication -----------------------------------------------------------------------------

AUTH_ENV = "SDD_STACK_AUTH"
AUTH_FILE_ENV = "SDD_STACK_AUTH_FILE"


@dataclass(frozen=True)
class StackAuth:
    """The one user of an authenticated stack: Prefect's basic-auth user and MLflow's admin."""

    user: str
    password: str = field(repr=False)

    @property
    def basic(self) -> str:
        """``user:password``, what Prefect's auth string holds."""
        return f"{self.user}:{self.password}"

    @classmethod
    def parse(cls, text: str, source: str) -> StackAuth:
        user, sep, password = text.strip().partition(":")
        if not sep or not user or not password or any(c.isspace() or not c.isprintable() for c in user):
            raise ConfigError(f"{source}: expected one line 'user:password' with a non-empty user "
                              f"(no spaces) and password")
        if any(not c.isprintable() for c in password):
            raise ConfigError(f"{source}: the password has control characters; use printable ones")
        return cls(user, password)

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> StackAuth:
        """From ``$SDD_STACK_AUTH`` (``user:password``), else the file ``$SDD_STACK_AUTH_FILE`` names."""
        environ = os.environ if environ is None else environ
        if environ.get(AUTH_ENV):
            return cls.parse(environ[AUTH_ENV], f"${AUTH_ENV}")
        path = environ.get(AUTH_FILE_ENV)
        if not path:
            raise ConfigError(f"--auth: set {AUTH_ENV}=user:password or {AUTH_FILE_ENV}=<file holding "
                              f"user:password> in the environment (never on the command line)")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"${AUTH_FILE_ENV}: cannot read {path!r} ({type(e).__name__}); "
                              f"point it at a UTF-8 file holding user:password") from None
        return cls.parse(text, f"${AUTH_FILE_ENV} ({path})")

    def client_env(self) -> dict[str, str]:
        """What workers, flow runs and ``prefect`` / ``mlflow`` clients need to get in."""
        return {"PREFECT_API_AUTH_STRING": self.basic, "MLFLOW_TRACKING_USERNAME": self.user,
                "MLFLOW_TRACKING_PASSWORD": self.password}

    def header(self) -> str:
        return "Basic " + base64.b64encode(self.basic.encode()).decode()

