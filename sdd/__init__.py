"""sdd: Safe self-Distillation of Diffusion models, as a production pipeline.

The library (this package) holds every piece of the method and its measurement; ``flows/``
only orchestrates calls into it. One package per stage, in data-flow order: :mod:`sdd.prompts`,
:mod:`sdd.erasure`, :mod:`sdd.evaluation`, :mod:`sdd.redteam`, :mod:`sdd.registry`; beside them the
toy world (:mod:`sdd.toy`), the local stack (:mod:`sdd.stack`), the settings (:mod:`sdd.config`),
the command line (:mod:`sdd.cli`) and a few shared modules (errors, layout, storage, progress,
provenance, models, tokens, plots). The README's "Layout" is the map.
"""

__version__ = "0.1.0"

import os as _os

# transformers 5 warns at import that torchvision is missing (we use its PIL image processors on
# purpose); keep the CLI's output to what the user asked for.
_os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# No network but PyPI on our machines: nothing may try to phone home.
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
_os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
