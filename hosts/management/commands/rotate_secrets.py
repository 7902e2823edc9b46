"""Re-encrypt every stored private key under the newest key.

Rotation: put the new Fernet key first in SECRETS_KEYS, keep the old ones
after it, run this command, then remove the old keys (on every machine).
"""

from django.core.management.base import BaseCommand, CommandError

from hosts.certificates.errors import CertificateProblem
from hosts.certificates.store import rotate_stored_keys


class Command(BaseCommand):
    help = "Re-encrypt every stored private key under the first of SECRETS_KEYS, so older keys can be retired."

    def handle(self, *args, **options) -> None:
        try:
            rotated, current = rotate_stored_keys()
        except CertificateProblem as problem:
            raise CommandError(problem.message, returncode=1) from None
        self.stdout.write(
            f"re_encrypted={rotated} already_current={current}: every stored private key now opens with the "
            "first of SECRETS_KEYS; the keys after it can be removed."
        )
