"""Every error ``sdd`` raises on purpose, in two kinds: the user's to fix, or worth retrying.

* :class:`ConfigError` (also importable from :mod:`sdd.config`): a settings file, a flag, an input
  folder the user must fix. The CLI prints it as one line and exits with status 2; the flows never
  retry it.
* :class:`TransientError`: the input was fine but something outside it failed (an artifact store,
  a server that did not start, a concurrent writer, shard results not all there yet). The CLI
  prints one line and exits with status 1; the flows retry it.

Both derive from :class:`SddError`, whose message is always one line (:func:`one_line`).
:data:`EXIT_CODES` is the one mapping from error kind to exit status.
"""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with line breaks and other unprintable characters escaped (``\\n``, ``\\x1b``)."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


class SddError(Exception):
    """Base of the errors ``sdd`` raises on purpose; the message is one line meant for the user.

    Whatever a message quotes from user input (a key, a file name, a concept), it stays one line.
    """

    def __init__(self, message: object = "", *args: object):
        super().__init__(one_line(str(message)), *args)


class ConfigError(SddError, ValueError):
    """Something the user must fix (a settings file or value, a flag, an input folder); never retried."""


UserError = ConfigError


class TransientError(SddError):
    """The input was fine but something it depends on failed; rerunning may succeed."""


#: Exit status of the CLI for each kind of error (the first matching class wins).
EXIT_CODES: dict[type[SddError], int] = {ConfigError: 2, TransientError: 1}


def exit_code(error: SddError) -> int:
    return next((code for kind, code in EXIT_CODES.items() if isinstance(error, kind)), 1)


def is_user_error(error: BaseException) -> bool:
    """True for errors a retry cannot fix (what the flows' retry conditions ask)."""
    return isinstance(error, ConfigError)


# --- registry (sdd.registry) --------------------------------------------------------------------


class RegistryError(SddError):
    """Any registry failure; raised as one of the two kinds below."""


class RegistryInputError(RegistryError, ConfigError):
    """A registry operation the user can fix (unknown model or version, unfinished folder, bad input)."""


class RegistryUnavailable(RegistryError, TransientError):
    """The tracking server is unreachable or failed on its side; rerunning may succeed."""


class PromotionRefused(RegistryInputError):
    """Promotion of a version whose gates failed, without ``force`` and a reason."""


class ProtectedAliasViolation(PromotionRefused):
    """A protected alias found on a version the promotion rule refuses (the reconcile's finding)."""


class ConcurrentPromotionError(RegistryError, TransientError):
    """Another promotion moved the alias between ours and its verification; re-run to decide."""


class ArtifactUploadError(RegistryError, TransientError):
    """The artifact store (S3, the server's proxied store) failed after the transport's retries.

    Not the user's input: ``sdd register`` exits with status 1 and the flow's register stage retries.
    The MLflow run is marked ``FAILED`` and no model version exists for it.
    """


# --- the local stack (sdd.stack) and sharded evaluation (sdd.evaluation.shards) -------------------


class StackError(TransientError):
    """A server or worker of the local stack did not start, answer or register in time; one line."""


class WorkerExitedError(StackError):
    """A worker of the local stack exited before its first heartbeat (sdd.stack starts it once more)."""


class ShardError(TransientError):
    """Shard results that cannot be merged (missing, duplicated or mismatched); one line saying which."""


class ShardCountError(ShardError, ConfigError):
    """A shard count below one: the caller's to fix."""
