"""A patient withdraws consent: recorded by a privacy officer, never packed again, old
versions flagged, new training runs on them refused."""

from __future__ import annotations

import re

import pytest
from django.db import DatabaseError, transaction

from apps.audit.models import AuditEvent
from apps.datasets import services
from apps.datasets.models import ConsentWithdrawal, DatasetMember

pytestmark = pytest.mark.django_db


def test_a_withdrawal_is_recorded_once_and_audited_without_the_pseudonym(built, user_of):
    officer = user_of("privacy_officer")
    row, created = services.withdraw_consent(
        "P-BBBB", reference="DPO-2026-041", acting_user=officer
    )
    assert created and row.reference == "DPO-2026-041" and row.recorded_by == officer
    again, created = services.withdraw_consent("P-BBBB", reference="", acting_user=officer)
    assert not created and again.pk == row.pk
    events = AuditEvent.objects.filter(action="datasets.consent_withdrawn")
    assert events.count() == 1
    event = events.get()
    assert event.details["versions_holding"] == [built.pk]
    assert "P-BBBB" not in str(event.details) and "DPO" not in str(event.details)


@pytest.mark.parametrize(
    ("pseudonym", "reference", "message"),
    [
        ("P-NOBODY", "", "no de-identified file belongs to patient P-NOBODY"),
        ("P-BBBB", "Zhang San", "the reference is a case number"),
        ("P-BBBB", "x" * 81, "the reference is a case number"),
        ("P-BB\nBB", "", "1 to 80 characters on one line"),
        ("", "", "1 to 80 characters on one line"),
    ],
)
def test_a_withdrawal_refuses_an_unknown_patient_and_free_text(
    world, pseudonym, reference, message
):
    with pytest.raises(services.DatasetError, match=message):
        services.withdraw_consent(pseudonym, reference=reference, acting_user=None)
    assert not ConsentWithdrawal.objects.exists()


def test_the_database_refuses_to_rewrite_a_withdrawal(world):
    row, _ = services.withdraw_consent("P-CCCC", reference="", acting_user=None)
    with pytest.raises(DatabaseError), transaction.atomic():
        ConsentWithdrawal.objects.filter(pk=row.pk).update(patient_pseudonym="P-AAAA")


def test_no_later_version_packs_a_withdrawn_patient_signal_files_included(built, world):
    services.withdraw_consent("P-BBBB", reference="", acting_user=None)
    later = services.build_version("after", [world.run], target_shard_mb=1, acting_user=None)
    assert later.status == "ready"
    packed = set(DatasetMember.objects.filter(version=later).values_list("raw_file_id", flat=True))
    patient_b = {raw.pk for key, raw in world.raws.items() if key.startswith("b_")}
    assert not packed & patient_b  # b_dat has no pseudonym of its own: it goes with its sample
    assert {world.raws[k].pk for k in ("a_ct1", "a_ecg", "c_note")} <= packed
    # Two MR slices, the report, the WFDB header and its signal file.
    assert later.skipped["consent_withdrawn"] == 5
    # The version built before keeps its files, and says how many samples are affected.
    assert services.withdrawn_samples(built) == 1
    assert services.withdrawn_samples(later) == 0


def test_a_version_of_only_withdrawn_patients_is_refused_with_the_reason(world):
    for patient in ("P-AAAA", "P-BBBB", "P-CCCC"):
        services.withdraw_consent(patient, reference="", acting_user=None)
    version = services.build_version("none", [world.run], target_shard_mb=1, acting_user=None)
    assert version.status == "failed" and "consent_withdrawn" in version.error


def test_a_new_training_run_on_a_version_holding_withdrawn_data_is_refused(built):
    from apps.jobs import services as jobs
    from apps.jobs.validation import cpu_trial

    spec = cpu_trial("after-withdrawal", built.pk)
    assert not any("withdrew consent" in e for e in _errors(jobs.check_run(spec)))
    services.withdraw_consent("P-AAAA", reference="", acting_user=None)
    errors = _errors(jobs.check_run(spec))
    assert any("1 sample of ct-demo v1 belongs to a patient who withdrew" in e for e in errors)


def _errors(plan):
    return [str(message) for messages in plan.errors.values() for message in messages]


def test_a_privacy_officer_records_a_withdrawal_from_the_patient_report(built, as_role):
    client = as_role("privacy_officer")
    report = "/datasets/lineage/?q=P-BBBB&kind=patient"
    page = client.get(report).content.decode()
    assert 'data-testid="withdraw-form"' in page and 'value="P-BBBB"' in page
    # Without the confirmation nothing is recorded.
    response = client.post("/datasets/lineage/withdraw/", {"pseudonym": "P-BBBB"}, follow=True)
    assert "Tick the confirmation" in response.content.decode()
    assert not ConsentWithdrawal.objects.exists()
    response = client.post(
        "/datasets/lineage/withdraw/",
        {"pseudonym": "P-BBBB", "reference": "DPO-7", "confirm": "on"},
        follow=True,
    )
    page = response.content.decode()
    assert response.redirect_chain[-1][0] == "/datasets/lineage/?q=P-BBBB&kind=patient"
    assert 'data-testid="withdrawn"' in page and "case DPO-7" in page
    assert 'data-testid="withdraw-form"' not in page
    assert ConsentWithdrawal.objects.get().patient_pseudonym == "P-BBBB"
    # A hostile reference is refused with the reason, and nothing else is recorded.
    response = client.post(
        "/datasets/lineage/withdraw/",
        {"pseudonym": "P-CCCC", "reference": "<script>", "confirm": "on"},
        follow=True,
    )
    assert "the reference is a case number" in response.content.decode()
    assert ConsentWithdrawal.objects.count() == 1


@pytest.mark.parametrize("role", ["data_steward", "auditor", "operator", "admin"])
def test_only_privacy_officers_record_withdrawals(built, as_role, role):
    client = as_role(role)
    page = client.get("/datasets/lineage/?q=P-BBBB&kind=patient").content.decode()
    assert 'data-testid="withdraw-form"' not in page
    response = client.post("/datasets/lineage/withdraw/", {"pseudonym": "P-BBBB", "confirm": "on"})
    assert response.status_code == 403
    assert not ConsentWithdrawal.objects.exists()


def test_a_version_page_flags_samples_whose_patient_withdrew(built, as_role):
    url = f"/datasets/{built.pk}/"
    assert 'data-testid="withdrawn-samples"' not in as_role("operator").get(url).content.decode()
    services.withdraw_consent("P-AAAA", reference="", acting_user=None)
    page = as_role("operator").get(url).content.decode()
    assert 'data-testid="withdrawn-samples"' in page
    assert "1 sample of this version belongs to a patient who withdrew consent" in page


def test_withdraw_consent_from_the_command_line(built):
    from io import StringIO

    from django.core.management import CommandError, call_command

    out = StringIO()
    call_command("withdraw_consent", "P-BBBB", "--reference", "DPO-9", stdout=out)
    text = out.getvalue()
    assert "patient P-BBBB: consent withdrawal recorded at" in text
    assert f"patient P-BBBB: ct-demo v1 (id {built.pk}): 5 files in 1 sample" in text
    assert ConsentWithdrawal.objects.get().reference == "DPO-9"
    again = StringIO()
    call_command("lineage", "--patient", "P-BBBB", stdout=again)
    assert "patient P-BBBB: consent withdrawn at" in again.getvalue()
    with pytest.raises(CommandError, match="no de-identified file belongs to patient P-NONE"):
        call_command("withdraw_consent", "P-NONE", stdout=StringIO())


def test_the_overview_counts_withdrawals_and_the_versions_they_touch(built, as_role):
    from tests.core.test_overview import cards

    client = as_role("privacy_officer")
    assert cards(client.get("/").content.decode())["lineage"] == ["0", "0"]
    services.withdraw_consent("P-AAAA", reference="", acting_user=None)
    assert cards(client.get("/").content.decode())["lineage"] == ["1", "1"]


def test_the_withdrawals_api_records_once_and_only_for_privacy_officers(built, as_role):
    url = "/api/datasets/withdrawals/"
    body = {"patient_pseudonym": "P-CCCC", "reference": "DPO-12"}
    for role in ("data_steward", "operator", "auditor"):
        assert as_role(role).post(url, body, content_type="application/json").status_code == 403
    officer = as_role("privacy_officer")
    created = officer.post(url, body, content_type="application/json")
    assert created.status_code == 201, created.content
    assert created.json()["patient_pseudonym"] == "P-CCCC"
    assert created.json()["recorded_by"].endswith("privacy_officer")
    again = officer.post(url, body, content_type="application/json")
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"]
    bad = officer.post(
        url, {"patient_pseudonym": "P-AAAA", "reference": "Li Si"}, content_type="application/json"
    )
    assert bad.status_code == 400 and "case number" in bad.json()["detail"]
    listed = as_role("auditor").get(url).json()
    assert [w["patient_pseudonym"] for w in listed["results"]] == ["P-CCCC"]
    assert as_role("operator").get(url).status_code == 403
    row = f"{url}{created.json()['id']}/"
    assert (
        officer.patch(row, {"reference": "x"}, content_type="application/json").status_code == 405
    )
    assert officer.delete(row).status_code == 405


def test_a_patient_report_says_how_many_packed_files_no_patient_search_reaches(built, as_role):
    page = as_role("privacy_officer").get("/datasets/lineage/?q=P-AAAA&kind=patient")
    assert 'data-testid="unlinked"' not in page.content.decode()  # every sample names one
    from apps.datasets.models import DatasetVersion

    # A version whose two files reached it with no study and no patient ID to link them.
    bare = DatasetVersion.objects.create(
        name="bare", number=1, status="ready", target_shard_mb=1, root=built.root
    )
    for n, m in enumerate(DatasetMember.objects.filter(version=built)[:2]):
        DatasetMember.objects.create(
            version=bare,
            deid_result=m.deid_result,
            raw_file=m.raw_file,
            run=m.run,
            sample_key=f"s-orphan-{n}",
            member="txt",
            patient_pseudonym="",
        )
    assert services.reach_of_patient("P-AAAA").unlinked_files == 2
    page = as_role("privacy_officer").get("/datasets/lineage/?q=P-AAAA&kind=patient")
    assert "2 packed files belong to no patient" in page.content.decode()


def test_a_run_page_says_when_its_data_includes_a_withdrawn_patient(built, as_role):
    from dataclasses import fields

    from apps.jobs.models import TrainingRun
    from apps.jobs.validation import RunSpec, cpu_trial

    spec = cpu_trial("before-withdrawal", built.pk)
    run = TrainingRun.objects.create(
        **{
            f.name: getattr(spec, f.name) for f in fields(RunSpec) if f.name != "dataset_version_id"
        },
        dataset_version=built,
        state="running",
        plan={},
    )
    url = f"/jobs/runs/{run.pk}/"
    assert 'data-testid="withdrawn"' not in as_role("operator").get(url).content.decode()
    services.withdraw_consent("P-BBBB", reference="", acting_user=None)
    page = as_role("operator").get(url).content.decode()
    assert "1 sample of ct-demo v1 belongs to a patient who withdrew consent" in page


def test_the_launch_form_no_longer_offers_a_version_holding_withdrawn_data(built, world):
    from apps.jobs.forms import RunForm

    later = services.build_version("later", [world.run], target_shard_mb=1, acting_user=None)
    assert set(RunForm().fields["dataset_version"].queryset) == {built, later}
    services.withdraw_consent("P-AAAA", reference="", acting_user=None)
    rebuilt = services.build_version("rebuilt", [world.run], target_shard_mb=1, acting_user=None)
    assert set(RunForm().fields["dataset_version"].queryset) == {rebuilt}


def test_the_version_list_flags_versions_holding_withdrawn_data(built, world, as_role):
    later = services.build_version("later", [world.run], target_shard_mb=1, acting_user=None)
    client = as_role("operator")
    assert 'data-testid="withdrawn-flag"' not in client.get("/datasets/").content.decode()
    services.withdraw_consent("P-CCCC", reference="", acting_user=None)
    after = services.build_version("after", [world.run], target_shard_mb=1, acting_user=None)
    page = client.get("/datasets/").content.decode()
    rows = {
        int(pk): row for pk, row in re.findall(r'<tr data-version="(\d+)">(.*?)</tr>', page, re.S)
    }
    assert 'data-testid="withdrawn-flag"' in rows[built.pk]
    assert 'data-testid="withdrawn-flag"' in rows[later.pk]
    assert 'data-testid="withdrawn-flag"' not in rows[after.pk]


# --- re-consent ------------------------------------------------------------------------------


def test_re_consent_ends_the_withdrawal_and_later_builds_pack_the_patient_again(
    built, world, user_of
):
    from apps.datasets.models import ConsentReinstatement

    officer = user_of("privacy_officer")
    services.withdraw_consent("P-BBBB", reference="DPO-1", acting_user=officer)
    during = services.build_version("during", [world.run], target_shard_mb=1, acting_user=None)
    assert services.withdrawn_samples(built) == 1
    row = services.reinstate_consent("P-BBBB", reference="DPO-2", acting_user=officer)
    assert isinstance(row, ConsentReinstatement) and row.withdrawal.patient_pseudonym == "P-BBBB"
    assert services.withdrawn_pseudonyms() == set()
    assert services.withdrawn_samples(built) == 0  # the old version is no longer flagged
    after = services.build_version("after", [world.run], target_shard_mb=1, acting_user=None)
    patient_b = {raw.pk for key, raw in world.raws.items() if key.startswith("b_")}
    packed = set(DatasetMember.objects.filter(version=after).values_list("raw_file_id", flat=True))
    assert patient_b <= packed and "consent_withdrawn" not in after.skipped
    # The version built while the withdrawal was in force stays without them.
    kept = set(DatasetMember.objects.filter(version=during).values_list("raw_file_id", flat=True))
    assert not kept & patient_b
    event = AuditEvent.objects.get(action="datasets.consent_reinstated")
    assert event.user_id == officer.pk
    assert "P-BBBB" not in str(event.details) and "DPO" not in str(event.details)


def test_a_patient_may_withdraw_again_and_the_history_reads_in_order(built):
    first, _ = services.withdraw_consent("P-CCCC", reference="DPO-1", acting_user=None)
    services.reinstate_consent("P-CCCC", reference="DPO-2", acting_user=None)
    second, created = services.withdraw_consent("P-CCCC", reference="DPO-3", acting_user=None)
    assert created and second.pk != first.pk
    assert services.withdrawn_pseudonyms() == {"P-CCCC"}
    report = services.reach_of_patient("P-CCCC")
    assert [w.reference for w in report.consent_history] == ["DPO-1", "DPO-3"]
    assert report.consent_history[0].reinstatement.reference == "DPO-2"
    assert report.withdrawal.pk == second.pk


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("", "re-consent needs the case number"),
        ("Wang Wu", "the reference is a case number"),
        ("DPO-5", "patient P-AAAA has no consent withdrawal in force"),
    ],
)
def test_re_consent_needs_a_withdrawal_in_force_and_a_case_number(built, reference, message):
    from apps.datasets.models import ConsentReinstatement

    with pytest.raises(services.DatasetError, match=message):
        services.reinstate_consent("P-AAAA", reference=reference, acting_user=None)
    if reference:  # also refused once it has been given
        services.withdraw_consent("P-AAAA", reference="", acting_user=None)
        services.reinstate_consent("P-AAAA", reference="DPO-5", acting_user=None)
        with pytest.raises(services.DatasetError, match="has no consent withdrawal in force"):
            services.reinstate_consent("P-AAAA", reference="DPO-6", acting_user=None)
    assert ConsentReinstatement.objects.count() == (1 if reference else 0)


def test_the_database_refuses_to_rewrite_a_reinstatement(built):
    from apps.datasets.models import ConsentReinstatement

    services.withdraw_consent("P-CCCC", reference="", acting_user=None)
    row = services.reinstate_consent("P-CCCC", reference="DPO-2", acting_user=None)
    with pytest.raises(DatabaseError), transaction.atomic():
        ConsentReinstatement.objects.filter(pk=row.pk).update(reference="DPO-3")


def test_a_privacy_officer_records_re_consent_from_the_patient_report(built, as_role):
    services.withdraw_consent("P-BBBB", reference="DPO-1", acting_user=None)
    client = as_role("privacy_officer")
    page = client.get("/datasets/lineage/?q=P-BBBB&kind=patient").content.decode()
    assert 'data-testid="reinstate-form"' in page
    refused = client.post(
        "/datasets/lineage/reinstate/", {"pseudonym": "P-BBBB", "reference": "DPO-2"}, follow=True
    )
    assert "tick the confirmation to record re-consent" in refused.content.decode()
    assert services.withdrawn_pseudonyms() == {"P-BBBB"}
    response = client.post(
        "/datasets/lineage/reinstate/",
        {"pseudonym": "P-BBBB", "reference": "DPO-2", "confirm": "on"},
        follow=True,
    )
    page = response.content.decode()
    assert response.redirect_chain[-1][0] == "/datasets/lineage/?q=P-BBBB&kind=patient"
    assert services.withdrawn_pseudonyms() == set()
    assert 'data-testid="withdrawn"' not in page and 'data-testid="withdraw-form"' in page
    assert "Consent given again" in page and "case DPO-2" in page
    for role in ("data_steward", "auditor", "operator", "admin"):
        services.withdraw_consent("P-BBBB", reference="DPO-3", acting_user=None)
        forbidden = as_role(role).post(
            "/datasets/lineage/reinstate/",
            {"pseudonym": "P-BBBB", "reference": "DPO-4", "confirm": "on"},
        )
        assert forbidden.status_code == 403
        assert services.withdrawn_pseudonyms() == {"P-BBBB"}


def test_the_reinstatements_api_records_once_and_only_for_privacy_officers(built, as_role):
    services.withdraw_consent("P-CCCC", reference="DPO-1", acting_user=None)
    url = "/api/datasets/reinstatements/"
    body = {"patient_pseudonym": "P-CCCC", "reference": "DPO-2"}
    for role in ("data_steward", "operator", "auditor"):
        assert as_role(role).post(url, body, content_type="application/json").status_code == 403
    officer = as_role("privacy_officer")
    created = officer.post(url, body, content_type="application/json")
    assert created.status_code == 201, created.content
    assert created.json()["patient_pseudonym"] == "P-CCCC"
    assert created.json()["reference"] == "DPO-2"
    again = officer.post(url, body, content_type="application/json")
    assert again.status_code == 400 and "no consent withdrawal in force" in again.json()["detail"]
    listed = as_role("auditor").get("/api/datasets/withdrawals/").json()["results"]
    assert [(w["patient_pseudonym"], w["reinstated_at"] is not None) for w in listed] == [
        ("P-CCCC", True)
    ]
    assert len(as_role("auditor").get(url).json()["results"]) == 1
    row = f"{url}{created.json()['id']}/"
    assert officer.delete(row).status_code == 405


def test_reinstate_consent_from_the_command_line(built):
    from io import StringIO

    from django.core.management import CommandError, call_command

    services.withdraw_consent("P-BBBB", reference="DPO-1", acting_user=None)
    out = StringIO()
    call_command("reinstate_consent", "P-BBBB", "--reference", "DPO-9", stdout=out)
    text = out.getvalue()
    assert "patient P-BBBB: consent reinstated at" in text
    assert "patient P-BBBB: consent withdrawn at" in text  # the history, then the reach
    assert services.withdrawn_pseudonyms() == set()
    with pytest.raises(CommandError, match="has no consent withdrawal in force"):
        call_command("reinstate_consent", "P-BBBB", "--reference", "DPO-10", stdout=StringIO())


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_officers_recording_the_same_re_consent_at_once_record_it_once(on_postgres, world):
    import threading

    from django.db import connections

    from apps.datasets.models import ConsentReinstatement

    services.withdraw_consent("P-AAAA", reference="DPO-1", acting_user=None)
    sessions = 8
    start = threading.Barrier(sessions)
    outcomes: list[str] = []

    def officer(n: int) -> None:
        try:
            start.wait()
            services.reinstate_consent("P-AAAA", reference=f"DPO-{n}", acting_user=None)
            outcomes.append("recorded")
        except services.DatasetError as exc:
            outcomes.append(str(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=officer, args=(n,)) for n in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["patient P-AAAA has no consent withdrawal in force"] * (
        sessions - 1
    ) + ["recorded"]
    assert ConsentReinstatement.objects.count() == 1
    assert AuditEvent.objects.filter(action="datasets.consent_reinstated").count() == 1
