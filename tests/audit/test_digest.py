"""The daily digest: the day's chain head, signed, written once, checked by audit_verify."""

from __future__ import annotations

import json
import os
import stat
from datetime import date

import pytest
from botocore.exceptions import ClientError
from django.db import transaction
from django.utils import timezone

from apps.audit import services
from apps.audit.models import AuditEvent
from apps.audit.services import AuditError, read_anchors, verify_chain, write_daily_digest
from apps.audit.stores import DigestConflict, LocalDigestStore, get_store
from apps.audit.testing import triggers_bypassed

pytestmark = pytest.mark.django_db
TABLE = AuditEvent._meta.db_table
DAY1, DAY2 = date(2026, 3, 1), date(2026, 3, 2)


@pytest.fixture
def two_days(events, clock):
    """Three events on 1 March, two on 2 March (site time), and the clock on 3 March."""
    clock.set(2026, 3, 1, 9, 0)
    first_day = events(3)
    clock.set(2026, 3, 2, 23, 59, 59)
    second_day = events(2)
    clock.set(2026, 3, 3, 0, 10)
    return first_day, second_day


def _anchors():
    return read_anchors(get_store())


def test_it_seals_the_last_event_of_the_day_in_site_time(two_days, digest_dir):
    first_day, _ = two_days
    result = write_daily_digest(DAY1)
    assert (result.head_seq, result.head_digest, result.created) == (3, first_day[-1].digest, True)
    doc = json.loads((digest_dir / "2026-03-01.json").read_text())
    assert doc["day"] == "2026-03-01"
    assert (doc["head_seq"], doc["head_digest"]) == (3, first_day[-1].digest)
    assert doc["signature"] == services.sign({k: v for k, v in doc.items() if k != "signature"})


def test_it_seals_yesterday_by_default(two_days, digest_dir):
    result = write_daily_digest()
    assert result.day == DAY2
    assert result.head_seq == 5


def test_it_refuses_to_seal_a_day_that_is_not_over(two_days):
    with pytest.raises(AuditError, match="not over"):
        write_daily_digest(date(2026, 3, 3))


def test_it_seals_an_empty_chain_with_the_genesis_digest(db, clock):
    clock.set(2026, 3, 3, 0, 10)
    result = write_daily_digest(DAY1)
    assert result.head_seq == 0
    assert verify_chain(anchors=_anchors()).ok


def test_writing_the_digest_is_itself_audited(two_days):
    write_daily_digest(DAY1)
    event = AuditEvent.objects.order_by("-seq").first()
    assert (event.action, event.resource) == ("audit.digest_written", "audit.digest:2026-03-01")
    assert event.details["head_seq"] == 3


def test_the_file_is_written_once_and_made_read_only(two_days, digest_dir):
    write_daily_digest(DAY1)
    path = digest_dir / "2026-03-01.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
    assert not [p for p in digest_dir.iterdir() if p.name.startswith(".")]  # no temp left


def test_a_second_write_for_the_same_day_is_a_no_op(two_days, digest_dir):
    write_daily_digest(DAY1)
    count = AuditEvent.objects.count()
    again = write_daily_digest(DAY1)
    assert again.created is False
    assert AuditEvent.objects.count() == count  # not audited twice


def test_a_different_digest_for_a_sealed_day_is_refused(tmp_path):
    store = LocalDigestStore(tmp_path)
    assert store.put("2026-03-01.json", b"one")[0] is True
    with pytest.raises(DigestConflict):
        store.put("2026-03-01.json", b"two")
    assert (tmp_path / "2026-03-01.json").read_bytes() == b"one"


def test_a_refused_write_leaves_no_audit_event(two_days, digest_dir):
    digest_dir.mkdir(parents=True, exist_ok=True)
    (digest_dir / "2026-03-01.json").write_bytes(b"{}")
    count = AuditEvent.objects.count()
    with pytest.raises(DigestConflict):
        write_daily_digest(DAY1)
    assert AuditEvent.objects.count() == count


def test_the_celery_task_seals_the_day(two_days, digest_dir):
    from apps.audit.tasks import write_daily_digest as task

    out = task.apply(args=["2026-03-01"]).get()
    assert out["head_seq"] == 3
    assert (digest_dir / "2026-03-01.json").exists()


# --- audit_verify against the digests ---------------------------------------------------------


def test_the_chain_verifies_against_its_digests(two_days):
    write_daily_digest(DAY1)
    write_daily_digest(DAY2)
    result = verify_chain(anchors=_anchors())
    assert result.ok, result.reason
    assert result.digests_checked == 2


def test_it_detects_a_truncated_tail_that_the_chain_alone_cannot_show(two_days):
    write_daily_digest(DAY1)
    write_daily_digest(DAY2)
    with triggers_bypassed() as cursor:
        cursor.execute(f"DELETE FROM {TABLE} WHERE seq >= 5")
    assert verify_chain().ok  # a shorter chain is still a valid chain...
    result = verify_chain(anchors=_anchors())
    assert not result.ok  # ...but the day-2 digest sealed #5
    assert result.broken_seq == 5
    assert "2026-03-02" in result.reason


def test_it_detects_a_rewritten_history_with_recomputed_digests(two_days):
    """An attacker who edits #2 and recomputes every later digest fools the chain, not the seal."""
    write_daily_digest(DAY1)
    rows = list(AuditEvent.objects.order_by("seq"))
    with triggers_bypassed():
        prev = rows[0].digest
        for row in rows[1:]:
            if row.seq == 2:
                row.user_id = 666
            fields = dict(
                seq=row.seq,
                prev_digest=prev,
                ts=row.timestamp,
                user_id=row.user_id,
                action=row.action,
                resource=row.resource,
                pre_hash=row.pre_hash,
                post_hash=row.post_hash,
                request_id=row.request_id,
                client_ip=row.client_ip,
                details_json=row.details_json,
            )
            row.prev_digest, row.digest = prev, services.compute_digest(**fields)
            row.save()
            prev = row.digest
    assert verify_chain().ok
    result = verify_chain(anchors=_anchors())
    assert result.broken_seq == 3
    assert "daily digest for 2026-03-01" in result.reason


def test_it_detects_a_forged_digest_file(two_days, digest_dir):
    write_daily_digest(DAY1)
    path = digest_dir / "2026-03-01.json"
    doc = json.loads(path.read_text())
    doc["head_seq"] = 2
    path.chmod(0o644)
    path.write_text(json.dumps(doc))
    result = verify_chain(anchors=_anchors())
    assert not result.ok
    assert "invalid signature" in result.reason


def test_the_command_checks_the_stored_digests(two_days):
    from django.core.management import CommandError, call_command

    write_daily_digest(DAY2)  # seals #5, then records #6
    with triggers_bypassed() as cursor:
        cursor.execute(f"DELETE FROM {TABLE} WHERE seq >= 5")
    with pytest.raises(CommandError, match="BROKEN at #5"):
        call_command("audit_verify", "--quiet")
    call_command("audit_verify", "--quiet", "--no-digests", "--no-save")


# --- S3 Object Lock ---------------------------------------------------------------------------


@pytest.fixture
def s3_bucket(monkeypatch):
    """A moto stand-in for an S3 bucket with Object Lock: no object store runs on this machine
    or in CI, so this proves the calls and their arguments, not a vendor's enforcement."""
    from moto import mock_aws

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        import boto3

        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="medctl-audit", ObjectLockEnabledForBucket=True)
        yield client


def test_the_s3_store_writes_with_compliance_retention(s3_bucket, settings, two_days):
    """moto stand-in (see the fixture): object put once with an Object Lock retention."""
    settings.AUDIT_DIGEST_STORE = "s3"
    settings.AUDIT_DIGEST_S3_BUCKET = "medctl-audit"
    settings.AUDIT_DIGEST_RETENTION_DAYS = 30
    result = write_daily_digest(DAY1)
    assert result.location == "s3://medctl-audit/audit-digests/2026-03-01.json"
    # head_object, not get_object_retention: the latter answers 500 in moto 5.2.
    head = s3_bucket.head_object(Bucket="medctl-audit", Key="audit-digests/2026-03-01.json")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert (head["ObjectLockRetainUntilDate"] - timezone.now()).days in (29, 30)
    assert verify_chain(anchors=_anchors()).ok


def test_the_s3_store_refuses_to_overwrite_a_key(s3_bucket, settings):
    """moto stand-in (see the fixture): a different body under an existing key is refused."""
    from apps.audit.stores import S3DigestStore

    store = S3DigestStore("medctl-audit", prefix="d/", client=s3_bucket)
    assert store.put("2026-03-01.json", b"one")[0] is True
    assert store.put("2026-03-01.json", b"one")[0] is False
    with pytest.raises(DigestConflict):
        store.put("2026-03-01.json", b"two")
    assert list(store.items()) == [("2026-03-01.json", b"one")]
    version = s3_bucket.head_object(Bucket="medctl-audit", Key="d/2026-03-01.json")["VersionId"]
    with pytest.raises(ClientError, match="AccessDenied"):
        s3_bucket.delete_object(Bucket="medctl-audit", Key="d/2026-03-01.json", VersionId=version)


def test_an_unknown_store_is_a_configuration_error(settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.AUDIT_DIGEST_STORE = "floppy"
    with pytest.raises(ImproperlyConfigured, match="floppy"):
        get_store()


def test_a_digest_is_recorded_in_the_callers_transaction_or_not_at_all(two_days, monkeypatch):
    from apps.audit import stores

    def broken_put(self, name, data):
        raise stores.DigestStoreError("disk full")

    monkeypatch.setattr(stores.LocalDigestStore, "put", broken_put)
    count = AuditEvent.objects.count()
    with pytest.raises(stores.DigestStoreError), transaction.atomic():
        write_daily_digest(DAY1)
    assert AuditEvent.objects.count() == count


def test_a_filesystem_without_hard_links_still_gets_a_write_once_file(tmp_path, monkeypatch):
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    store = LocalDigestStore(tmp_path)
    assert store.put("2026-03-01.json", b"one") == (True, str(tmp_path / "2026-03-01.json"))
    assert stat.S_IMODE(os.stat(tmp_path / "2026-03-01.json").st_mode) == 0o444
    assert store.put("2026-03-01.json", b"one")[0] is False
    with pytest.raises(DigestConflict):
        store.put("2026-03-01.json", b"two")
