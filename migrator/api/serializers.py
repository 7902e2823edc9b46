"""What the API returns for migrations, their samples and events, and
batches. The list shape is the history export's columns (one meaning for
each name everywhere); the detail adds the live page's state."""

from __future__ import annotations

from django import forms
from rest_framework import serializers

from ..forms import MigrationForm
from ..history import EXPORT_COLUMN_NAMES
from ..live import migration_state
from ..models import Batch, Migration, MigrationEvent, MigrationSample


class MigrationSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    page = serializers.SerializerMethodField()
    tls = serializers.SerializerMethodField()
    started_by = serializers.CharField(source="started_by_username")
    cancelled_by = serializers.CharField(source="cancelled_by_username")
    batch = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = Migration
        fields = [
            *(name for name in EXPORT_COLUMN_NAMES),
            "wait_reason",
            "not_before",
            "batch",
            "url",
            "page",
        ]

    def get_url(self, migration: Migration) -> str:
        return f"/api/v1/migrations/{migration.pk}/"

    def get_page(self, migration: Migration) -> str:
        return migration.get_absolute_url()

    def get_tls(self, migration: Migration) -> bool:
        return bool(migration.parameters.get("tls"))


class SampleSerializer(serializers.ModelSerializer):
    class Meta:
        model = MigrationSample
        exclude = ["id", "migration", "raw"]


class EventSerializer(serializers.ModelSerializer):
    class Meta:
        model = MigrationEvent
        fields = ["at", "state", "message"]


class MigrationDetailSerializer(MigrationSerializer):
    """One migration: the record, its live state (the page's and the
    websocket's JSON), its events, the report and prediction reviewed, and
    (unless ?samples=0) every sample."""

    live = serializers.SerializerMethodField()
    events = EventSerializer(many=True, read_only=True)
    samples = serializers.SerializerMethodField()

    class Meta(MigrationSerializer.Meta):
        fields = [
            *MigrationSerializer.Meta.fields,
            "precheck_report",
            "job_precheck_report",
            "prediction",
            "final_stats",
            "live",
            "events",
            "samples",
        ]

    def get_live(self, migration: Migration) -> dict:
        return migration_state(migration)

    def get_samples(self, migration: Migration) -> list[dict]:
        if not self.context.get("samples", True):
            return []
        return [s.as_dict() for s in migration.samples.all()]


_FIELD_TYPES = {
    forms.BooleanField: lambda f: serializers.BooleanField(required=False, help_text=f.help_text),
    forms.IntegerField: lambda f: serializers.IntegerField(required=False, allow_null=True, help_text=f.help_text),
    forms.DateTimeField: lambda f: serializers.DateTimeField(required=False, allow_null=True, help_text=f.help_text),
    forms.MultipleChoiceField: lambda f: serializers.ListField(
        child=serializers.CharField(), required=False, help_text=f.help_text
    ),
}


def _as_serializer_field(field: forms.Field) -> serializers.Field:
    for kind, make in _FIELD_TYPES.items():
        if isinstance(field, kind):
            return make(field)
    return serializers.CharField(required=False, allow_blank=True, help_text=field.help_text)


def _migration_request_serializer() -> type[serializers.Serializer]:
    """The body of a migration request, for the schema: the wizard's form
    fields (the form itself validates it, with the wizard's messages)."""
    attrs: dict = {
        "vm": serializers.CharField(help_text="The VM: its id in this API, or its UUID."),
        "destination": serializers.CharField(help_text="The destination host: its id, or its name."),
    }
    for name, field in MigrationForm.base_fields.items():
        if name != "destination":
            attrs[name] = _as_serializer_field(field)
    return type("MigrationRequestSerializer", (serializers.Serializer,), attrs)


MigrationRequestSerializer = _migration_request_serializer()


class CheckSerializer(serializers.Serializer):
    name = serializers.CharField()
    status = serializers.CharField(help_text="pass, warn or fail")
    message = serializers.CharField()


class PrecheckResultSerializer(serializers.Serializer):
    ok = serializers.BooleanField(help_text="True when nothing stops the migration.")
    checks = serializers.ListField(child=serializers.DictField())
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))


class ActionRequestSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(
        choices=["bandwidth", "max_downtime", "postcopy", "force_complete"],
        help_text="bandwidth and max_downtime take a value (MiB/s, ms).",
    )
    value = serializers.IntegerField(required=False, allow_null=True)


class MessageSerializer(serializers.Serializer):
    detail = serializers.CharField()


class BatchSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    page = serializers.SerializerMethodField()

    class Meta:
        model = Batch
        exclude = ["plan"]

    def get_url(self, batch: Batch) -> str:
        return f"/api/v1/batches/{batch.pk}/"

    def get_page(self, batch: Batch) -> str:
        return batch.get_absolute_url()
