"""Pure PyTorch trainer for multimodal medical models (text + DICOM images + ECG/EEG waveforms).

Never imports Django: the control plane renders this package's command line
(``python -m trainer train ...``) and reads what it writes (checkpoints, metrics, JSONL).
Importing ``trainer`` or ``trainer.config`` does not import torch, so the control plane can
validate a run's configuration before submitting it.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: Exit code asking the scheduler side to requeue the job: the trainer caught SIGTERM/SIGUSR1
#: (Slurm pre-emption or time limit warning), wrote a checkpoint, and stopped cleanly.
#: 75 is EX_TEMPFAIL from sysexits.h: "temporary failure, the user is invited to retry".
EXIT_REQUEUE = 75
#: Exit code for a configuration or usage error (never worth a retry).
EXIT_CONFIG_ERROR = 2
