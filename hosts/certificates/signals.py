"""Decrypted client keys on disk go with what they belong to: a host deleted
(its TLS assignment cascades) or an assignment removed, however it is done."""

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from hosts.models import Host

from .models import HostTLS
from .pkipath import forget_material, forget_orphaned_material


@receiver(post_delete, sender=HostTLS, dispatch_uid="pkipath_assignment_deleted")
@receiver(post_delete, sender=Host, dispatch_uid="pkipath_host_deleted")
def remove_written_material(sender, instance, **kwargs) -> None:
    host_pk = instance.pk if sender is Host else instance.host_id

    def remove() -> None:
        forget_material(host_pk)
        forget_orphaned_material()

    transaction.on_commit(remove)
