from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from migrator.audit.models import AuditEvent
from migrator.roles import ALL_ROLES

ROLE_ALIASES = {
    "operator": "operators",
    "auditor": "auditors",
    "security-admin": "security admins",
    "security_admin": "security admins",
    "security admin": "security admins",
}


class Command(BaseCommand):
    help = "Create (or update) a user with a role: operator, auditor, security-admin or superuser."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", action="append", default=[], help="operator, auditor, security-admin, superuser")
        parser.add_argument("--password", help="Password to set; without it the user must have one already.")
        parser.add_argument("--email", default="")

    @transaction.atomic
    def handle(self, username, role, password, email, **options):
        roles = []
        superuser = False
        for name in role:
            key = name.strip().lower()
            if key == "superuser":
                superuser = True
                continue
            group = ROLE_ALIASES.get(key, key)
            if group not in ALL_ROLES:
                raise CommandError(f"Unknown role {name!r}; use operator, auditor, security-admin or superuser.")
            roles.append(group)
        user, created = User.objects.get_or_create(username=username, defaults={"email": email})
        if password:
            user.set_password(password)
        elif created:
            raise CommandError("A new user needs --password.")
        if superuser:
            user.is_superuser = user.is_staff = True
        user.save()
        for group in roles:
            user.groups.add(Group.objects.get(name=group))
        AuditEvent.record(
            "user.created" if created else "user.roles_changed",
            obj=user,
            details={"roles": roles, "superuser": superuser, "via": "create_user command"},
        )
        verb = "Created" if created else "Updated"
        self.stdout.write(
            f"{verb} {username}: roles {', '.join(roles) or 'none'}{' + superuser' if superuser else ''}."
        )
