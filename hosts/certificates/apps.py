from django.apps import AppConfig


class CertificatesConfig(AppConfig):
    name = "hosts.certificates"
    label = "certificates"
    verbose_name = "Certificates"

    def ready(self) -> None:
        from . import signals  # noqa: F401
