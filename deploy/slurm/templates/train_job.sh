#!/bin/bash
# medctl training run {{ run_name }} (run {{ run_id }}, attempt {{ attempt }}), rendered by
# apps/jobs/rendering.py from deploy/slurm/templates/train_job.sh (modelled on the seed's
# appendix A). Every value below was validated against a strict pattern or is a number, and
# is shell-quoted where the shell reads it. Retries, resume and cleanup live in the control
# plane, not here: this file holds directives, environment and one launch line.
#SBATCH --job-name={{ job_name }}
#SBATCH --nodes={{ nodes }}
#SBATCH --ntasks-per-node={{ ntasks_per_node }}
{% if gpus_per_node %}#SBATCH --gpus-per-node={{ gpus_per_node }}
{% endif %}{% if cpus_per_task %}#SBATCH --cpus-per-task={{ cpus_per_task }}
{% endif %}#SBATCH --time={{ time_limit }}
{% if partition %}#SBATCH --partition={{ partition }}
{% endif %}{% if account %}#SBATCH --account={{ account }}
{% endif %}{% if qos %}#SBATCH --qos={{ qos }}
{% endif %}#SBATCH --output={{ output }}
# Two minutes before the time limit (or a pre-emption) every rank gets SIGUSR1: the trainer
# writes a checkpoint and exits 75, and the control plane resumes it in a new attempt.
#SBATCH --signal=USR1@120
#SBATCH --requeue

# NCCL. The seed exported NCCL_IB_GID_INDEX=3 (a RoCE v2 setting that breaks native
# InfiniBand), hard-coded NCCL_SOCKET_IFNAME=ib0 (absent on many nodes) and NCCL_DEBUG=INFO
# (megabytes of log per rank); these come from the site's JOBS_NCCL_ENV setting instead.
{% for line in nccl_env %}export {{ line }}
{% endfor %}export PYTHONFAULTHANDLER=1
# A collective that hangs (a dead peer) aborts the rank instead of idling until the time limit.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export PYTHONPATH={{ pythonpath }}

# Rendezvous on the first node: the batch script itself runs there. The seed used a fixed
# port 6000 (two jobs on one node collide), mixed --master_addr/--node_rank with a c10d
# rendezvous, and started torchrun from the batch shell only, i.e. on the first node alone.
# Here the port is derived from the job id and every node starts its own ranks.
export MASTER_ADDR=$(uname -n)
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
echo "medctl: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST, rendezvous $MASTER_ADDR:$MASTER_PORT, restart ${SLURM_RESTART_COUNT:-0}"

{% if launcher == "torchrun" %}{% if on_cluster %}# One torchrun agent per node (one task per node); each starts {{ procs_per_node }} ranks.
# torchrun's agent does not pass SIGUSR1 on, but the scheduler signals every process of the
# step, so the ranks still see it; prefer the direct launcher where graceful stop matters.
srun --kill-on-bad-exit=1 --ntasks-per-node=1 {{ python }} -m torch.distributed.run --nnodes={{ nodes }} --nproc-per-node={{ procs_per_node }} --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" \
{% else %}{{ python }} -m torch.distributed.run --standalone --nproc-per-node={{ procs_per_node }} \
{% endif %}{% else %}{% if on_cluster %}# One task per rank, started by the scheduler: the trainer reads SLURM_PROCID/SLURM_NTASKS,
# SIGUSR1 reaches every rank directly and the step's exit code is the trainer's (75 = requeue).
srun --kill-on-bad-exit=1 {{ python }} \
{% elif procs_per_node > 1 %}{{ python }} -m torch.distributed.run --standalone --nproc-per-node={{ procs_per_node }} \
{% else %}exec {{ python }} \
{% endif %}{% endif %}  -m trainer train --config {{ preset }} --engine {{ engine }}{% if engine == "deepspeed" %} --zero-stage {{ zero_stage }}{% endif %} \
  --data {{ data_path }} \
  --save-dir {{ save_dir }} \
{% if resume %}  --resume latest \
{% endif %}{% if cache_root %}  --cache-dir {{ cache_root }}/"$SLURM_JOB_ID" \
{% endif %}{% if max_steps %}  --max-steps {{ max_steps }} \
{% endif %}{% for item in overrides %}  --set {{ item }} \
{% endfor %}  --metrics-port {{ metrics_port }}
