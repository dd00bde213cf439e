"""Who may do what with dataset versions (the declarations every datasets view and API uses).

Operators pick versions for training runs and may see what is behind them; auditors read;
only privacy officers, data stewards and auditors search where a raw file or a patient went
(the consent-withdrawal report). docs/datasets.md has the table.
"""

from __future__ import annotations

from apps.core.roles import AUDITOR, CLINICIAN, OPERATOR, PRIVACY, STEWARD

READ = (STEWARD, PRIVACY, OPERATOR, AUDITOR)
BUILD = (STEWARD,)
VERIFY = (STEWARD, PRIVACY, OPERATOR)
TOKENIZE = (STEWARD, OPERATOR)  # trains a tokenizer on a version's text for training runs
LINEAGE = (PRIVACY, STEWARD, AUDITOR)
WITHDRAW = (PRIVACY,)  # records a patient's consent withdrawal
LABELS_READ = (*READ, CLINICIAN)
LABELS_WRITE = (STEWARD, CLINICIAN)
