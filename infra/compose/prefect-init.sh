#!/usr/bin/env bash
# One-shot set-up of the Prefect server for the team stack (the prefect-init service, runner image):
#   1. the work pools: cpu (light stages) and gpu (distillation and sharded evaluation; at most
#      $SDD_GPU_CONCURRENCY flow runs at once, default 1), both of type process;
#   2. the deployments of prefect.yaml (erase-concepts, distill-gpu, re-erase), from the project folder;
#   3. the evaluate-sharded deployment (flows/shards.py) on the gpu pool;
#   4. the automation that marks flow runs Crashed when their heartbeats stop (a worker or GPU node
#      lost mid-run; the runners send heartbeats every $PREFECT_FLOWS_HEARTBEAT_FREQUENCY s);
#   5. the promotion guard's MLflow webhook (model_version_alias.created -> $SDD_GUARD_URL, signed
#      with $SDD_GUARD_SECRET), created or updated.
# A pool that exists is left as it is (settings changed in the UI survive a restart).
set -euo pipefail
cd "${SDD_PROJECT_DIR:-/opt/sdd}"

for pool in cpu gpu; do
  if ! prefect work-pool inspect "$pool" >/dev/null 2>&1; then
    prefect --no-prompt work-pool create "$pool" --type process
  fi
done
prefect work-pool set-concurrency-limit gpu "${SDD_GPU_CONCURRENCY:-1}"

prefect --no-prompt deploy --all
prefect --no-prompt deploy flows/shards.py:evaluate_sharded --name evaluate-sharded --pool gpu \
  --description "Sharded evaluation of an erased model on a Dask cluster (one shard per GPU)."
python -m sdd.stack zombie-automation
python -m sdd.registry.receiver register-webhook --url "${SDD_GUARD_URL:-http://guard:5055/webhook}"
echo "prefect-init: pools cpu and gpu, deployments, the zombie automation and the guard's webhook applied"
