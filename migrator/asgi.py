import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "migrator.settings")
# Django must be set up before the consumers import models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from migrator.api.websocket import OriginUnlessToken, TokenAuthMiddleware  # noqa: E402
from migrator.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Daphne has no static file server; the app serves its vendored assets
        # itself so the dashboard works on an air-gapped network.
        "http": ASGIStaticFilesHandler(django_asgi_app),
        # Browsers by their session (and Origin); scripts by an API token.
        "websocket": OriginUnlessToken(AuthMiddlewareStack(TokenAuthMiddleware(URLRouter(websocket_urlpatterns)))),
    }
)
