#!/usr/bin/env bash
# Multi-node DDP training under SLURM: one task per GPU, started by srun; Lightning reads the ranks from
# SLURM's environment, so it starts no process itself. Every rank writes into one run dir, RUN_DIR, which
# must be on a filesystem shared by the nodes.
#
# Submit from the repository root:
#   sbatch --nodes=2 --ntasks-per-node=4 --gpus-per-node=4 scripts/slurm_train.sh \
#       experiment=<preset> teacher.ckpt_path=/shared/teacher.ckpt
#   RUN_DIR=/shared/runs/mkd_rcan sbatch ... scripts/slurm_train.sh ...   # choose the run dir
#
# data.batch_size is the global batch (split over nodes x GPUs); see conf/trainer/ddp.yaml for the rule.
#SBATCH --job-name=meta-kd-sr
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=3-00:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

TRAIN=${TRAIN:-meta-kd-sr-train}   # e.g. TRAIN=.venv/bin/meta-kd-sr-train
# sbatch runs a spooled copy of this file: find rank_exec.sh from the submission dir (the repository root).
SCRIPTS=${SCRIPTS:-${SLURM_SUBMIT_DIR}/scripts}
RUN_DIR=${RUN_DIR:-outputs/slurm/${SLURM_JOB_NAME}-${SLURM_JOB_ID}}
GPUS_PER_NODE=$((SLURM_NTASKS / SLURM_JOB_NUM_NODES))

# An explicit hydra.run.dir: a ${now:} default would differ between ranks started seconds apart.
# rank_exec.sh keeps ranks > 0 from writing .hydra/ and train.log into the shared run dir.
srun --kill-on-bad-exit=1 "${SCRIPTS}/rank_exec.sh" "${TRAIN}" \
    trainer=ddp \
    trainer.devices="${GPUS_PER_NODE}" trainer.num_nodes="${SLURM_JOB_NUM_NODES}" \
    hydra.run.dir="${RUN_DIR}" \
    "$@"
