"""Read-only REST access to the audit trail: ``/api/audit/events/`` with the page's filters."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers, viewsets
from rest_framework.exceptions import ValidationError

from apps.audit.filtersets import AuditEventFilterForm
from apps.audit.models import EVENT_FIELDS, AuditEvent
from apps.core.roles import AUDITOR, PRIVACY


class AuditEventSerializer(serializers.ModelSerializer):
    details = serializers.JSONField(read_only=True)

    class Meta:
        model = AuditEvent
        fields = list(EVENT_FIELDS)
        read_only_fields = fields


_FILTER_PARAMETERS = [
    OpenApiParameter("user_id", OpenApiTypes.INT, description="events by this user id"),
    OpenApiParameter(
        "action",
        OpenApiTypes.STR,
        description="exact action, or a prefix ending in '.' (accounts.)",
    ),
    OpenApiParameter(
        "resource",
        OpenApiTypes.STR,
        description="exact resource (accounts.user:17) or a kind (accounts.user)",
    ),
    OpenApiParameter("request_id", OpenApiTypes.STR, description="all events of one request"),
    OpenApiParameter("since", OpenApiTypes.DATETIME, description="at or after (ISO 8601)"),
    OpenApiParameter("until", OpenApiTypes.DATETIME, description="at or before (ISO 8601)"),
]


@extend_schema_view(list=extend_schema(parameters=_FILTER_PARAMETERS))
class AuditEventViewSet(viewsets.ReadOnlyModelViewSet):
    """Audit events, newest first. Filters: ``user_id``, ``action`` (exact, or a prefix ending
    in '.'), ``resource`` (exact, or ``app.model`` for all of a kind), ``request_id``,
    ``since``, ``until`` (ISO 8601)."""

    allowed_roles = {AUDITOR, PRIVACY}
    serializer_class = AuditEventSerializer
    queryset = AuditEvent.objects.order_by("-seq")
    lookup_field = "seq"

    def get_queryset(self) -> Any:
        qs = super().get_queryset()
        if self.action != "list":
            return qs
        params = {
            k: v
            for k, v in self.request.query_params.items()
            if k in AuditEventFilterForm.base_fields
        }
        form = AuditEventFilterForm(params)
        if not form.is_valid():
            raise ValidationError(form.errors.get_json_data())
        return form.filter(qs)


routes = [("audit/events", AuditEventViewSet, "auditevent")]
