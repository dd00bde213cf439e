"""Re-identification: privacy officers only, a reason, audited by hash, shown once."""

from __future__ import annotations

import hashlib
import json

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from apps.audit.models import AuditEvent
from apps.core.roles import ALL_ROLES, PRIVACY, STEWARD
from apps.deid import services
from apps.deid.models import RevealLog
from tests.deid.factories import PATIENT_ID

pytestmark = pytest.mark.django_db
REASON = "Consent withdrawn, ethics ticket 2024-117"


@pytest.fixture
def pseudonym(mixed, no_ocr_profile):
    run = services.start_run(mixed.batch, profile=no_ocr_profile, acting_user=None, enqueue=False)
    services.process_run(run.pk, ocr=None)
    value = run.results.get(raw_file=mixed.files["dicom"]).patient_pseudonym
    assert value
    return value


def test_a_privacy_officer_gets_the_original_and_it_is_audited_by_hash(cast, pseudonym):
    officer = cast[PRIVACY]
    assert services.reveal_pseudonym(pseudonym, reason=REASON, acting_user=officer) == PATIENT_ID

    event = AuditEvent.objects.get(action="deid.pseudonym_revealed")
    assert event.user_id == officer.pk
    details = json.loads(event.details_json)
    assert details["pseudonym_sha256"] == hashlib.sha256(pseudonym.encode()).hexdigest()
    text = json.dumps(list(AuditEvent.objects.values()), default=str, ensure_ascii=False)
    assert PATIENT_ID not in text and pseudonym not in text and REASON not in text
    log = RevealLog.objects.get()
    assert (log.actor_id, log.reason, log.found) == (officer.pk, REASON, True)


@pytest.mark.parametrize("role", sorted(ALL_ROLES - {PRIVACY}))
def test_no_other_role_may_reveal(cast, pseudonym, role):
    with pytest.raises(PermissionDenied):
        services.reveal_pseudonym(pseudonym, reason=REASON, acting_user=cast[role])
    assert not RevealLog.objects.exists()


def test_a_reason_is_required(cast, pseudonym):
    for reason in ("", "   ", "because"):
        with pytest.raises(ValidationError):
            services.reveal_pseudonym(pseudonym, reason=reason, acting_user=cast[PRIVACY])
    assert not AuditEvent.objects.filter(action__startswith="deid.reveal").exists()


def test_an_unknown_pseudonym_is_audited_as_a_failed_attempt(cast, deid_keys, db):
    with pytest.raises(services.DeidServiceError):
        services.reveal_pseudonym("PNOSUCHPSEUDONYM", reason=REASON, acting_user=cast[PRIVACY])
    event = AuditEvent.objects.get(action="deid.reveal_failed")
    assert json.loads(event.details_json)["failure"] == "vault_not_found"


def test_the_reveal_page_shows_the_original_once_and_never_caches(client_as, pseudonym):
    client = client_as(PRIVACY)
    response = client.post("/deid/reveal/", {"pseudonym": pseudonym, "reason": REASON})
    assert response.status_code == 200
    assert PATIENT_ID in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    again = client.get("/deid/reveal/")
    assert PATIENT_ID not in again.content.decode()


def test_the_reveal_page_requires_a_reason(client_as, pseudonym):
    response = client_as(PRIVACY).post("/deid/reveal/", {"pseudonym": pseudonym, "reason": "x"})
    assert response.status_code == 400 and PATIENT_ID not in response.content.decode()
    assert not RevealLog.objects.exists()


def test_the_reveal_page_is_closed_to_stewards(client_as, pseudonym):
    response = client_as(STEWARD).post("/deid/reveal/", {"pseudonym": pseudonym, "reason": REASON})
    assert response.status_code == 403 and PATIENT_ID not in response.content.decode()
