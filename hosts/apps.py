from django.apps import AppConfig
from django.conf import settings
from django.core.signals import setting_changed

# Django setting → the gateway's configure() argument.
GATEWAY_SETTINGS = {
    "LIBVIRT_CONNECT_TIMEOUT_S": "connect_timeout_s",
    "LIBVIRT_CALL_TIMEOUT_S": "call_timeout_s",
    "LIBVIRT_KEEPALIVE_INTERVAL_S": "keepalive_interval_s",
    "LIBVIRT_KEEPALIVE_COUNT": "keepalive_count",
}


def configure_gateway() -> None:
    """Hand the libvirt bounds to the gateway, which does not import Django."""
    from . import gateway

    gateway.configure(**{arg: getattr(settings, name) for name, arg in GATEWAY_SETTINGS.items()})


def _reconfigure_gateway(*, setting: str, **_kwargs) -> None:
    if setting in GATEWAY_SETTINGS:
        configure_gateway()


class HostsConfig(AppConfig):
    name = "hosts"
    verbose_name = "Hosts and inventory"

    def ready(self) -> None:
        configure_gateway()
        # override_settings in tests changes the bounds too.
        setting_changed.connect(_reconfigure_gateway, dispatch_uid="hosts.gateway-settings")
