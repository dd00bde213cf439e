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


# --- the other way: a hospital patient ID to its pseudonym (consent withdrawal) -------------


def test_a_patient_id_leads_to_the_pseudonym_its_files_carry_audited_by_hash(cast, pseudonym):
    officer = cast[PRIVACY]
    found = services.pseudonym_of_patient_id(PATIENT_ID, reason=REASON, acting_user=officer)
    assert found == (pseudonym, True)
    event = AuditEvent.objects.get(action="deid.pseudonym_looked_up")
    details = json.loads(event.details_json)
    assert details["pseudonym_sha256"] == hashlib.sha256(pseudonym.encode()).hexdigest()
    text = json.dumps(list(AuditEvent.objects.values()), default=str, ensure_ascii=False)
    assert PATIENT_ID not in text and pseudonym not in text and REASON not in text
    log = RevealLog.objects.get()
    assert (log.kind, log.reason, log.found) == ("patient_id_lookup", REASON, True)
    assert PATIENT_ID not in json.dumps(list(RevealLog.objects.values()), default=str)
    # An ID no file was keyed on still gets its pseudonym, marked as carried by no file.
    other, carried = services.pseudonym_of_patient_id(
        "NO-SUCH-MRN", reason=REASON, acting_user=officer
    )
    assert other != pseudonym and not carried


@pytest.mark.parametrize("role", sorted(ALL_ROLES - {PRIVACY}))
def test_no_other_role_may_look_up_a_pseudonym(cast, pseudonym, role):
    with pytest.raises(PermissionDenied):
        services.pseudonym_of_patient_id(PATIENT_ID, reason=REASON, acting_user=cast[role])
    assert not RevealLog.objects.exists()


def test_a_lookup_needs_a_reason_and_a_one_line_id(cast, pseudonym):
    officer = cast[PRIVACY]
    for patient_id, reason in (
        (PATIENT_ID, "short"),
        ("", REASON),
        ("A\nB", REASON),
        ("x" * 65, REASON),
    ):
        with pytest.raises(ValidationError):
            services.pseudonym_of_patient_id(patient_id, reason=reason, acting_user=officer)
    assert not RevealLog.objects.exists()


def test_the_lookup_page_links_to_the_patient_lineage_and_keeps_the_id_out_of_urls(
    client_as, pseudonym
):
    client = client_as(PRIVACY)
    response = client.post(
        "/deid/reveal/lookup/", {"lookup-patient_id": PATIENT_ID, "lookup-reason": REASON}
    )
    page = response.content.decode()
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    assert f'data-testid="pseudonym">{pseudonym}<' in page
    assert f"/datasets/lineage/?q={pseudonym}&amp;kind=patient" in page
    assert PATIENT_ID not in page  # the form is emptied after a lookup
    refused = client_as(STEWARD).post(
        "/deid/reveal/lookup/", {"lookup-patient_id": PATIENT_ID, "lookup-reason": REASON}
    )
    assert refused.status_code == 403
    assert client.get("/deid/reveal/lookup/").status_code == 405
