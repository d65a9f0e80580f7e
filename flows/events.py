"""Events the pipeline emits. ``sdd concepts publish`` calls :func:`publish_concepts_updated`.

The ``re-erase`` deployment (``prefect.yaml``) has an event trigger on ``sdd.concepts.updated``
for any resource ``sdd.concepts.*``; the event's payload carries the concepts file, so the run it
starts reads exactly the file that was published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONCEPTS_UPDATED = "sdd.concepts.updated"


def publish_concepts_updated(concepts_file: Path, api_url: str | None = None) -> dict[str, Any]:
    """Validate ``concepts_file``, then emit ``sdd.concepts.updated`` to the Prefect API.

    ``api_url`` overrides ``PREFECT_API_URL`` (e.g. the local stack's server). Returns the payload.
    """
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.params import concept_set_hash, normalise_concepts
    from sdd.config import load_concept_sets

    sets = load_concept_sets(concepts_file)
    active = sets.active_set
    names = normalise_concepts(active.concepts)
    payload = {"concepts_file": str(concepts_file), "active": sets.active, "base_model": active.base_model,
               "concepts": names, "concepts_sha256": concept_set_hash(active.base_model, names)}
    updates = {PREFECT_API_URL: api_url} if api_url else {}
    with temporary_settings(updates=updates):
        event = emit_event(CONCEPTS_UPDATED, resource={"prefect.resource.id": f"sdd.concepts.{sets.active}",
                                                        "prefect.resource.name": sets.active},
                           payload=payload)
        EventsWorker.drain_all(timeout=30)  # send it before this short-lived process exits
    if event is None:
        raise RuntimeError("events are disabled here (no Prefect API configured); set PREFECT_API_URL "
                           "or start the stack with `sdd stack up`")
    return payload
