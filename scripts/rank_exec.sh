#!/usr/bin/env bash
# Run one rank of an externally launched DDP job (torchrun, srun) with rank-aware Hydra overrides: all ranks
# share hydra.run.dir; rank 0 writes .hydra/ and train.log there, rank r > 0 only train_rank<r>.log.
#   torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=<host>:29500 --no-python \
#       scripts/rank_exec.sh meta-kd-sr-train trainer=ddp trainer.devices=4 trainer.num_nodes=2 \
#       hydra.run.dir=/shared/runs/<name> ...
#   srun scripts/rank_exec.sh meta-kd-sr-train ...              (see scripts/slurm_train.sh)
set -euo pipefail
rank=${RANK:-${SLURM_PROCID:-0}}
if [[ "${rank}" != 0 ]]; then
    exec "$@" "hydra.job.name=train_rank${rank}" hydra.output_subdir=null
fi
exec "$@"
