"""Who may do what with training runs (the declarations every jobs view and API uses).

Operators (and administrators) launch, cancel, requeue and resume. Project managers and
auditors read runs, attempts, scripts and the cluster page: they answer for budget and
evidence, but a read-only view of a job cannot change the cluster.
"""

from __future__ import annotations

from apps.core.roles import ADMIN, AUDITOR, OPERATOR, PM

WRITE_ROLES = frozenset({OPERATOR, ADMIN})
READ_ROLES = frozenset({OPERATOR, ADMIN, PM, AUDITOR})
