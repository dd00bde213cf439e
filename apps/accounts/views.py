"""Login, TOTP, API tokens and the administrator's user list. Views stay thin."""

from __future__ import annotations

import base64

import segno
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST
from django_otp import login as otp_login
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.accounts import services
from apps.accounts.forms import NewUserForm, RolesForm, TokenForm, TotpForm
from apps.accounts.models import ApiToken
from apps.core import access
from apps.core.roles import ADMIN, ALL_ROLES


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    allowed_roles = access.PUBLIC
    mfa_exempt = True
    redirect_authenticated_user = True


class LogoutView(auth_views.LogoutView):
    allowed_roles = access.ANY_ROLE
    mfa_exempt = True


def _safe_next(request: HttpRequest, default: str = "/") -> str:
    nxt = request.GET.get("next") or request.POST.get("next") or default
    if url_has_allowed_host_and_scheme(nxt, {request.get_host()}, request.is_secure()):
        return nxt
    return default


@access.roles(*access.ANY_ROLE)
@access.mfa_exempt
def mfa(request: HttpRequest) -> HttpResponse:
    """Verify with the enrolled authenticator, or enrol one (QR code) when there is none."""
    user = request.user
    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    form = TotpForm(request.POST or None)
    if device is not None:
        if request.method == "POST" and form.is_valid():
            if device.verify_token(form.cleaned_data["code"].strip()):
                otp_login(request, device)
                services.record_mfa_passed(user, device)
                return redirect(_safe_next(request))
            form.add_error("code", _("That code is not valid. Wait for the next one and retry."))
        return render(
            request, "accounts/mfa_verify.html", {"form": form, "next": _safe_next(request)}
        )

    pending = services.pending_totp_device(user)
    if request.method == "POST" and form.is_valid():
        if services.confirm_totp(user, pending, form.cleaned_data["code"]):
            pending.refresh_from_db()
            otp_login(request, pending)
            messages.success(request, _("Authenticator enrolled."))
            return redirect(_safe_next(request))
        form.add_error("code", _("That code is not valid. Check the device clock and retry."))
    svg = segno.make(pending.config_url, error="m").svg_inline(scale=4)
    secret = base64.b32encode(pending.bin_key).decode().rstrip("=")
    return render(
        request,
        "accounts/mfa_enrol.html",
        {
            "form": form,
            "qr_svg": svg,
            "secret": secret,
            "next": _safe_next(request),
        },
    )


@access.roles(*access.ANY_ROLE)
def tokens(request: HttpRequest) -> HttpResponse:
    """The user's own API tokens; a new token's secret is shown exactly once."""
    held = access.roles_of(request.user)
    form = TokenForm(request.POST or None, roles=held)
    created = None
    if request.method == "POST" and form.is_valid():
        try:
            _, created = services.issue_token(
                request.user,
                name=form.cleaned_data["name"],
                hours=form.cleaned_data["hours"],
                scopes=set(form.cleaned_data["scopes"]),
            )
        except ValidationError as exc:
            form.add_error(None, exc)
    rows = ApiToken.objects.filter(user=request.user)
    return render(
        request, "accounts/tokens.html", {"form": form, "tokens": rows, "created": created}
    )


@access.roles(*access.ANY_ROLE)
@require_POST
def revoke_token(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    if services.revoke_token(token, acting_user=request.user):
        messages.success(request, _("Token revoked."))
    return redirect("accounts:tokens")


@access.roles(ADMIN)
def users(request: HttpRequest) -> HttpResponse:
    """Administrators create accounts and assign roles."""
    form = NewUserForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            validate_password(form.cleaned_data["password"])
            services.create_user(
                form.cleaned_data["username"],
                roles=set(form.cleaned_data["roles"]),
                password=form.cleaned_data["password"],
                acting_user=request.user,
            )
            messages.success(request, _("User created."))
            return redirect("accounts:users")
        except ValidationError as exc:
            form.add_error("password", exc)
    people = get_user_model().objects.order_by("username").prefetch_related("groups")
    rows = [(u, sorted(g.name for g in u.groups.all() if g.name in ALL_ROLES)) for u in people]
    return render(
        request,
        "accounts/users.html",
        {"form": form, "rows": rows, "role_choices": RolesForm().fields["roles"].choices},
    )


@access.roles(ADMIN)
@require_POST
def user_roles(request: HttpRequest, pk: int) -> HttpResponse:
    target = get_object_or_404(get_user_model(), pk=pk)
    form = RolesForm(request.POST)
    if form.is_valid():
        try:
            services.set_roles(target, set(form.cleaned_data["roles"]), acting_user=request.user)
            messages.success(request, _("Roles updated."))
        except ValidationError as exc:
            messages.error(request, "; ".join(exc.messages))
    return redirect("accounts:users")
