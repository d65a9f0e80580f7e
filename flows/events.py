"""Events the pipeline emits, and ``sdd concepts publish``, the command that emits them.

The ``re-erase`` deployment (``prefect.yaml``) has an event trigger on ``sdd.concepts.updated``
for any resource ``sdd.concepts.*``; the event's payload carries the concepts file, so the run it
starts reads exactly the file that was published. :data:`concepts_app` joins the ``sdd`` command
line through the ``sdd.cli`` entry point group (``pyproject.toml``), so ``sdd/`` never imports
Prefect or this package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sdd.cli import InputFile, Text
from sdd.errors import ConfigError
from sdd.prompts import concepts_updated_payload

CONCEPTS_UPDATED = "sdd.concepts.updated"


def publish_concepts_updated(concepts_file: Path, api_url: str | None = None) -> dict[str, Any]:
    """Validate ``concepts_file``, then emit ``sdd.concepts.updated`` to the Prefect API.

    ``api_url`` overrides ``PREFECT_API_URL`` (e.g. the local stack's server). Returns the payload.
    """
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    payload = concepts_updated_payload(concepts_file)
    updates = {PREFECT_API_URL: api_url} if api_url else {}
    with temporary_settings(updates=updates):
        event = emit_event(CONCEPTS_UPDATED, resource={"prefect.resource.id": f"sdd.concepts.{payload['active']}",
                                                        "prefect.resource.name": payload["active"]},
                           payload=payload)
        EventsWorker.drain_all(timeout=30)  # send it before this short-lived process exits
    if event is None:
        raise RuntimeError("events are disabled here (no Prefect API configured); set PREFECT_API_URL "
                           "or start the stack with `sdd stack up`")
    return payload


concepts_app = typer.Typer(help="Concept sets (params/concepts.yaml).", no_args_is_help=True)


@concepts_app.command("publish")
def concepts_publish(
    file: Path = typer.Option(Path("params/concepts.yaml"), "--file", parser=InputFile(),
                              help="The concept sets file."),
    api_url: str | None = typer.Option(None, "--api-url", parser=Text(),
                                       help="Prefect API [$PREFECT_API_URL, else the local stack's]."),
) -> None:
    """Validate the concept sets and emit `sdd.concepts.updated`, which triggers the re-erase flow."""
    from sdd.cli import exit_on_error
    from sdd.stack import api_url as stack_api_url

    with exit_on_error():
        url = api_url or stack_api_url()
        if not url:
            raise ConfigError("no Prefect API: set PREFECT_API_URL, pass --api-url or run `sdd stack up`")
        payload = publish_concepts_updated(file, api_url=url)
    typer.echo(f"published {CONCEPTS_UPDATED}: set {payload['active']} ({', '.join(payload['concepts'])}) "
               f"on {payload['base_model']}, hash {payload['concepts_sha256'][:12]}")
