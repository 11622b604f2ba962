"""WebSocket routes, mounted by `asgi.py` behind the origin and auth checks."""

from django.urls import path

from generation.consumers import JobEventsConsumer

websocket_urlpatterns = [
    path("ws/events/", JobEventsConsumer.as_asgi()),
]
