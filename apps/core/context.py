"""Per-request context (request id, client address) for the audit trail.

Set by ``RequestContextMiddleware`` for web requests and by ``bound_context`` for tasks and
commands, so a service deep in the call stack can stamp its audit event without every caller
passing the request along.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    client_ip: str | None = None


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "medctl_request_context", default=None
)


def new_request_id(proposed: str | None = None) -> str:
    """A request id: the proxy's X-Request-ID when it is well formed, else a fresh one."""
    if proposed and _REQUEST_ID_RE.match(proposed):
        return proposed
    return uuid.uuid4().hex


def current() -> RequestContext:
    """The active context; outside any request a fresh id marks a background operation."""
    ctx = _current.get()
    if ctx is None:
        ctx = RequestContext(request_id=new_request_id())
        _current.set(ctx)
    return ctx


@contextlib.contextmanager
def bound_context(
    request_id: str | None = None, client_ip: str | None = None
) -> Iterator[RequestContext]:
    ctx = RequestContext(request_id=new_request_id(request_id), client_ip=client_ip)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
