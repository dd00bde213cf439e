"""API: who am I, and my tokens (list, mint from a TOTP-verified session, revoke)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts import services
from apps.accounts.models import ApiToken
from apps.core import access


class ApiTokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "key_id",
            "scopes",
            "created",
            "expires_at",
            "revoked_at",
            "last_used_at",
        ]
        read_only_fields = fields


class IssuedTokenSerializer(ApiTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="the secret; shown this once only")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class NewTokenSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=80)
    hours = serializers.IntegerField(
        min_value=1, max_value=settings.API_TOKEN_MAX_HOURS, required=False
    )
    scopes = serializers.ListField(child=serializers.CharField(max_length=40), required=False)


class MeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    roles = serializers.ListField(child=serializers.CharField())
    token = serializers.CharField(allow_null=True)


class MeView(APIView):
    """The caller and the roles they act with now (narrowed by the token's scopes)."""

    allowed_roles = access.ANY_ROLE
    serializer_class = MeSerializer

    def get(self, request: Request) -> Response:
        user = request.user
        return Response(
            {
                "id": user.pk,
                "username": user.get_username(),
                "roles": sorted(access.roles_of(user, request.auth)),
                "token": request.auth.key_id if isinstance(request.auth, ApiToken) else None,
            }
        )


class ApiTokenViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Tokens belong to their owner; DELETE revokes (the row stays for the audit trail)."""

    allowed_roles = access.ANY_ROLE
    serializer_class = ApiTokenSerializer

    def get_queryset(self) -> Any:
        return ApiToken.objects.filter(user=self.request.user)

    @extend_schema(
        request=NewTokenSerializer,
        responses={
            201: IssuedTokenSerializer,
            400: OpenApiResponse(description="scopes or lifetime refused, or a bad field"),
            403: OpenApiResponse(description="asked with a token, not a signed-in session"),
        },
    )
    def create(self, request: Request) -> Response:
        # A token must not mint its successor: that would make short lifetimes meaningless.
        if isinstance(request.auth, ApiToken):
            raise PermissionDenied("Create tokens from a signed-in, TOTP-verified session.")
        data = NewTokenSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        scopes = data.validated_data.get("scopes")
        try:
            token, plaintext = services.issue_token(
                request.user,
                name=data.validated_data["name"],
                hours=data.validated_data.get("hours"),
                scopes=set(scopes) if scopes is not None else None,
            )
        except ValidationError as exc:
            return Response({"detail": exc.messages}, status=status.HTTP_400_BAD_REQUEST)
        body = ApiTokenSerializer(token).data | {"token": plaintext}
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: ApiToken) -> None:
        services.revoke_token(instance, acting_user=self.request.user)


routes = [("tokens", ApiTokenViewSet, "apitoken")]
