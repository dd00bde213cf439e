"""Write-once stores for the signed daily digests (one adapter per system, chosen by setting).

``local`` (default): a folder; each digest is written to a temporary file, fsynced, and
hard-linked to its final name, which fails if the name exists, so a file is created exactly
once and never rewritten; it is then made read-only (0444). Mount the folder on WORM media or
ship it off-host for real immutability.

``s3``: a bucket with Object Lock; each object is put with COMPLIANCE retention (nobody,
root included, can delete or overwrite it before the retention date) and only if its key
does not exist yet.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone


class DigestStoreError(Exception):
    """The store failed. ``permanent`` errors will not heal by retrying (Healthchecks habit)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class DigestConflict(DigestStoreError):
    """A different digest already exists under this name; write-once means it stays."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


class DigestStore(Protocol):
    kind: str

    def put(self, name: str, data: bytes) -> tuple[bool, str]:
        """Write ``data`` once under ``name``. Returns (created, location); an identical
        existing object returns (False, location); a different one raises DigestConflict."""
        ...

    def items(self) -> Iterator[tuple[str, bytes]]:
        """Every stored digest as (name, bytes), in name (= day) order."""
        ...


_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise DigestStoreError(f"bad digest name {name!r}", permanent=True)


class LocalDigestStore:
    kind = "local"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def put(self, name: str, data: bytes) -> tuple[bool, str]:
        _check_name(name)
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / name
        tmp = self.directory / f".{name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o444)
            try:
                # link() refuses an existing target: the atomic "create once" (rename would
                # silently replace it).
                try:
                    os.link(tmp, final)
                except OSError as exc:
                    if isinstance(exc, FileExistsError) or exc.errno not in _NO_HARD_LINKS:
                        raise
                    self._create_exclusive(final, data)  # a filesystem without hard links
            except FileExistsError:
                if final.read_bytes() == data:
                    return False, str(final)
                raise DigestConflict(
                    f"{final} already exists with different content; digests are written once"
                ) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new name survives a crash
        finally:
            os.close(dir_fd)
        return True, str(final)

    @staticmethod
    def _create_exclusive(final: Path, data: bytes) -> None:
        fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(final, 0o444)

    def items(self) -> Iterator[tuple[str, bytes]]:
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            if not path.name.startswith("."):
                yield path.name, path.read_bytes()


class S3DigestStore:
    kind = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        client: Any = None,
        retention_days: int = 3650,
        endpoint_url: str | None = None,
    ) -> None:
        if not bucket:
            raise ImproperlyConfigured("AUDIT_DIGEST_STORE=s3 needs AUDIT_DIGEST_S3_BUCKET")
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint_url)
        self.bucket, self.prefix, self.client = bucket, prefix, client
        self.retention_days = retention_days

    def _existing(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise DigestStoreError(f"s3://{self.bucket}/{key}: {exc}") from exc

    def put(self, name: str, data: bytes) -> tuple[bool, str]:
        from botocore.exceptions import ClientError

        _check_name(name)
        key = f"{self.prefix}{name}"
        location = f"s3://{self.bucket}/{key}"
        existing = self._existing(key)
        if existing is not None:
            if existing == data:
                return False, location
            raise DigestConflict(f"{location} already exists with different content")
        retain_until = timezone.now() + timedelta(days=self.retention_days)
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType="application/json",
                ObjectLockMode="COMPLIANCE",
                ObjectLockRetainUntilDate=retain_until,
                # Closes the race between the check above and this write (S3 conditional
                # writes); a store without them still has the check and the lock.
                IfNoneMatch="*",
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise DigestConflict(f"{location} was written concurrently") from exc
            permanent = code in ("InvalidRequest", "NoSuchBucket", "AccessDenied")
            raise DigestStoreError(f"{location}: {exc}", permanent=permanent) from exc
        return True, location

    def items(self) -> Iterator[tuple[str, bytes]]:
        paginator = self.client.get_paginator("list_objects_v2")
        keys = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        for key in sorted(keys):
            if key.endswith(".json"):
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                yield key[len(self.prefix) :], body


def get_store() -> DigestStore:
    """The store named by settings.AUDIT_DIGEST_STORE."""
    kind = settings.AUDIT_DIGEST_STORE
    if kind == "local":
        return LocalDigestStore(settings.AUDIT_DIGEST_DIR)
    if kind == "s3":
        return S3DigestStore(
            settings.AUDIT_DIGEST_S3_BUCKET,
            prefix=settings.AUDIT_DIGEST_S3_PREFIX,
            retention_days=settings.AUDIT_DIGEST_RETENTION_DAYS,
            endpoint_url=settings.AUDIT_DIGEST_S3_ENDPOINT,
        )
    raise ImproperlyConfigured(f"AUDIT_DIGEST_STORE={kind!r}: expected 'local' or 's3'")
