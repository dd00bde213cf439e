#!/bin/bash
#SBATCH --job-name={{ job_name }}
#SBATCH --signal=USR1@120
#SBATCH --requeue
# Test stand-in for deploy/slurm/templates/train_job.sh: same context, no training. It sleeps
# {{ max_steps }} seconds and exits 3 for runs named *fail*, 75 (the trainer's
# "requeue me") for *requeue*, 0 otherwise.
echo "medctl test job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0} save-dir {{ save_dir }}"
sleep {{ max_steps }}
echo "done"
exit {% if "fail" in run_name %}3{% elif "requeue" in run_name %}75{% else %}0{% endif %}
