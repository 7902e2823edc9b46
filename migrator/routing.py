from django.urls import path

from . import consumers

websocket_urlpatterns = [
    path("ws/migrations/", consumers.MigrationListConsumer.as_asgi()),
    path("ws/migrations/<int:pk>/", consumers.MigrationConsumer.as_asgi()),
    path("ws/vms/<int:pk>/dirty-rate/", consumers.DirtyRateConsumer.as_asgi()),
]
