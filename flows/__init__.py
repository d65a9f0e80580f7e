"""Prefect orchestration of the ``sdd`` library: flows, deployments (``prefect.yaml``) and events.

``sdd/`` never imports Prefect; each task here is one call into it.

* :mod:`flows.erase` -- ``erase-concepts``: prompt sets -> distill -> evaluate -> gates -> register,
  and ``distill``, the GPU stage on its own, so it can run on another work pool; its run folders,
  their cache ids and lock are :mod:`flows.plan`, its Markdown artifact :mod:`flows.report`.
* :mod:`flows.reerase` -- ``re-erase``: re-erase when ``params/concepts.yaml``'s active set changes.
* :mod:`flows.promote` -- ``promote`` (the rule of ``sdd promote`` as a UI form) and ``promoted-check``
  (started by the ``sdd.model.promoted`` event: redraw a sample of the promoted version's evaluation).
* :mod:`flows.events` -- the ``sdd.concepts.updated`` event, and ``sdd concepts publish`` that emits it
  (it joins the ``sdd`` command line through the ``sdd.cli`` entry point group).
* :mod:`flows.shards` -- an evaluation split over a Dask cluster (:mod:`sdd.evaluation.shards`).
* :mod:`flows.demo` -- ``make demo``'s job: the toy world's check, then ``erase-concepts``.
* :mod:`flows.params` -- flow parameters whose defaults come from ``params/*.yaml``.
"""
