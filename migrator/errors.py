"""What an error page may show: Django's filter hides settings named like
keys and passwords; connection strings (the Redis URL, the database, the
channel layer and RQ queues) carry hosts and passwords too."""

import re

from django.views.debug import SafeExceptionReporterFilter


class SettingsHidingFilter(SafeExceptionReporterFilter):
    hidden_settings = re.compile(
        "API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL|DATABASE|REDIS|CHANNEL|QUEUE|BROKER|DSN",
        flags=re.IGNORECASE,
    )
