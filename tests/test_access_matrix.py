"""The whole URL configuration against the role declarations (default deny, proven).

Walks every URL pattern; each must declare its roles. Anonymous callers are sent to login
(pages) or refused (API) everywhere except public rows; each role gets exactly the rows its
declaration allows. docs/access-matrix.md must match the declarations.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from apps.core import access
from apps.core.roles import ALL_ROLES

pytestmark = pytest.mark.django_db

DOC = Path(__file__).resolve().parent.parent / "docs" / "access-matrix.md"


def test_every_endpoint_declares_its_roles():
    undeclared = [ep["route"] for ep in access.iter_endpoints() if ep["roles"] is None]
    assert undeclared == []


def test_every_endpoint_has_a_sample_url():
    missing = [ep["route"] for ep in access.iter_endpoints() if ep["sample"] is None]
    assert missing == []


def test_the_documented_matrix_matches_the_declarations():
    assert DOC.read_text(encoding="utf-8") == access.matrix_markdown(), (
        "docs/access-matrix.md is stale: run `make access-matrix`"
    )


def test_anonymous_is_sent_to_login_or_refused_everywhere_but_public(client):
    for ep in access.iter_endpoints():
        response = client.get(ep["sample"])
        if ep["roles"] == access.PUBLIC:
            assert response.status_code not in (401, 403), ep["route"]
            assert "/accounts/login/" not in response.get("Location", ""), ep["route"]
        elif ep["api"]:
            assert response.status_code in (401, 403), ep["route"]
        else:
            assert response.status_code == 302, ep["route"]
            assert response["Location"].startswith("/accounts/login/"), ep["route"]


@pytest.mark.parametrize("role", sorted(ALL_ROLES))
def test_each_role_gets_exactly_what_the_matrix_allows(role, client_as):
    client = client_as(role)
    for ep in access.iter_endpoints():
        if ep["roles"] == access.PUBLIC:
            continue
        response = client.get(ep["sample"])
        if role in ep["roles"]:
            assert response.status_code not in (401, 403), (ep["route"], response.status_code)
            assert "/accounts/login/" not in response.get("Location", ""), ep["route"]
        else:
            assert response.status_code == 403, (ep["route"], response.status_code)


def test_a_view_without_a_declaration_is_closed(rf, cast):
    from django.http import HttpResponse

    from apps.core.middleware import AccessMiddleware

    def undeclared(request):
        return HttpResponse("secret")

    request = rf.get("/anything")
    request.user = cast["admin"]
    response = AccessMiddleware(lambda r: HttpResponse())(request)
    assert response.status_code == 200  # the middleware itself passes plain requests on
    denied = AccessMiddleware(lambda r: HttpResponse()).process_view(request, undeclared, (), {})
    assert denied is not None and denied.status_code == 403


@pytest.mark.parametrize("role", sorted(ALL_ROLES))
def test_write_methods_refuse_the_roles_their_actions_exclude(role, client_as):
    """The narrowed rows (POST/PUT/PATCH/DELETE) of the matrix, proven on their deny side."""
    client = client_as(role)
    checked = 0
    for ep in access.iter_endpoints():
        for method, allowed_roles in ep["methods"].items():
            if method == "GET" or role in allowed_roles:
                continue
            response = client.generic(method, ep["sample"], "{}", "application/json")
            assert response.status_code == 403, (method, ep["route"], response.status_code)
            checked += 1
    assert checked > 0 or role in {"data_steward", "privacy_officer"}


def test_anonymous_writes_are_refused(client):
    for ep in access.iter_endpoints():
        for method in ep["methods"]:
            if method != "GET":
                response = client.generic(method, ep["sample"], "{}", "application/json")
                assert response.status_code in (401, 403), (method, ep["route"])
