#!/usr/bin/env bash
# N hpo workers on one study as a Slurm job array against Postgres.
#   export HPO_DB_PASSWORD=...        # read by hpo, never printed
#   sbatch --array=0-3 deploy/slurm/hpo-array.sh studies/quickstart.yaml
#   HPO_IMAGE=hpo.sif sbatch --array=0-3 ...   # inside the deploy/Dockerfile image
# Each array task is one `hpo worker`: it joins the study (same storage URL) and claims
# trials until the study's total budget is met, then exits 0. Tasks may start late or be
# preempted: a task that dies mid-trial is detected by heartbeat and its trial is retried
# from the last checkpoint (keep output_dir on a shared file system). scancel, preemption
# and the time limit send SIGTERM to every process of the step, then SIGKILL after KillWait
# (30 s by default): `hpo worker` (exec'd below, so it is the step's process) fails its
# running trial as `interrupted`, not counted against budget.max_failures, and exits 143
# within seconds.
#SBATCH --job-name=hpo-worker
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --output=hpo-worker-%A_%a.log
##SBATCH --gres=gpu:1            # one GPU per worker
set -euo pipefail

study_file="${1:?usage: sbatch --array=0-N hpo-array.sh STUDY.yaml}"
# Single quotes: hpo itself expands ${HPO_DB_PASSWORD}, so the password stays out of ps.
default_storage='postgresql+psycopg2://hpo:${HPO_DB_PASSWORD}@db.cluster:5432/hpo'
storage="${HPO_STORAGE:-$default_storage}"
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
export HF_HUB_OFFLINE=1

echo "array task ${SLURM_ARRAY_TASK_ID:-0} on $(hostname): joining ${study_file}"
if [[ -n "${HPO_IMAGE:-}" ]]; then
  # The image built from deploy/Dockerfile, through Apptainer: HPO_IMAGE=hpo.sif (from
  # `apptainer build hpo.sif docker://registry.example.com/ml/hpo-finetune:0.1.0`).
  # The host environment, HPO_DB_PASSWORD included, passes into the container as it is;
  # HPO_APPTAINER_ARGS adds flags such as "--nv" (GPUs) or "--bind /scratch".
  # shellcheck disable=SC2206  # the flags are meant to split
  run=(apptainer exec ${HPO_APPTAINER_ARGS:-} "$HPO_IMAGE" python)
else
  # An environment with `pip install 'hpo-finetune[postgres]'` (or -e '.[postgres]').
  run=("${HPO_PYTHON:-python}")
fi
exec "${run[@]}" -m hpo worker "$study_file" --storage "$storage" \
  --set "output_dir=${HPO_OUTPUT_DIR:-runs}"
