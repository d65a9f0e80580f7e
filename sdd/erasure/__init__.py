"""Stage 2, erasure: SDD (Kim et al. 2023) self-distils a model so that it cannot draw some concepts.

* :mod:`sdd.erasure.engine`: :func:`erase` (``sdd erase``) and the :class:`Distiller` that holds
  one run's state and takes its steps;
* :mod:`sdd.erasure.objective`: the SDD loss, the trained parameters, the EMA teacher;
* :mod:`sdd.erasure.components`: which components train (UNet parameters, the text encoders);
* :mod:`sdd.erasure.sampler`: the teacher's trajectories that give the training latents (the
  paper's loop, or the trajectory pool);
* :mod:`sdd.erasure.retention`: the retention term that keeps benign prompts near the base model;
* :mod:`sdd.erasure.adversary`: robust erasure, attacks on the student in the loop (its pool at the
  text encoder's input when that trains: :mod:`sdd.erasure.adversary_inputs`);
* :mod:`sdd.erasure.checkpoint`: the resumable checkpoint (a resumed run is bit-identical);
* :mod:`sdd.erasure.outputs`: what an erasure writes (model, patch, manifest, loss) and
  :func:`apply_patch`, which turns a base model into the erased one.
"""

from sdd.erasure.adversary import Adversary
from sdd.erasure.checkpoint import load_checkpoint, save_checkpoint
from sdd.erasure.engine import Distiller, NonFiniteLossError, erase
from sdd.erasure.objective import TRAIN_METHODS, ema_copy, ema_update, sdd_loss, select_parameters
from sdd.erasure.outputs import ErasureResult, apply_patch, loss_summary, save_patch, write_outputs
from sdd.erasure.retention import Retention, benign_only
from sdd.erasure.sampler import Batch, Pool, ddim_step, pool_phases, sample_latents
from sdd.models import timestep_bin  # the training timesteps of DDIM step k (sdd.models.schedules)

__all__ = [
    "TRAIN_METHODS", "Adversary", "Batch", "Distiller", "ErasureResult", "NonFiniteLossError", "Pool",
    "Retention",
    "apply_patch", "benign_only", "ddim_step", "ema_copy", "ema_update", "erase", "load_checkpoint",
    "loss_summary", "pool_phases", "sample_latents", "save_checkpoint", "save_patch", "sdd_loss",
    "select_parameters", "timestep_bin", "write_outputs",
]
