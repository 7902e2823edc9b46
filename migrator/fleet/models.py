"""A batch: the migrations of one evacuation or one bulk move, the plan the
operator reviewed, and its report of predicted against actual."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone


class BatchKind(models.TextChoices):
    EVACUATION = "evacuation", "Evacuation"
    BULK = "bulk", "Bulk migration"


class BatchState(models.TextChoices):
    RUNNING = "running", "Running"
    CANCELLING = "cancelling", "Cancelling"
    FINISHED = "finished", "Finished"
    CANCELLED = "cancelled", "Cancelled"


BATCH_ACTIVE_STATES = (BatchState.RUNNING, BatchState.CANCELLING)
BATCH_BADGES = {
    BatchState.RUNNING: "primary",
    BatchState.CANCELLING: "warning",
    BatchState.FINISHED: "success",
    BatchState.CANCELLED: "dark",
}


class Batch(models.Model):
    kind = models.CharField(max_length=16, choices=BatchKind.choices)
    state = models.CharField(max_length=16, choices=BatchState.choices, default=BatchState.RUNNING)
    source = models.ForeignKey("hosts.Host", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    source_name = models.CharField(max_length=100)
    policy = models.CharField(max_length=32, blank=True)
    # The plan as the operator reviewed it (migrator.planning.evacuation's
    # Plan.as_dict()): steps, VMs that cannot move, predicted totals.
    plan = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_username = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    not_before = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancelled_by_username = models.CharField(max_length=150, blank=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} of {self.source_name}"

    def get_absolute_url(self) -> str:
        return reverse("migrator:batch", args=[self.pk])

    @property
    def badge(self) -> str:
        return BATCH_BADGES.get(self.state, "secondary")

    @property
    def is_active(self) -> bool:
        return self.state in BATCH_ACTIVE_STATES

    @property
    def group_name(self) -> str:
        return f"batch-{self.pk}"


class QueueLock(models.Model):
    """One row that every dispatcher updates first in its transaction: the
    update holds the row (PostgreSQL) or the database's write lock (SQLite)
    until commit, so slot decisions of any number of workers, on any number
    of machines, happen one after another."""

    turns = models.BigIntegerField(default=0)
