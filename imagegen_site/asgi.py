"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

import os
from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagegen_site.settings")
# Django must be set up before anything imports models.
django.setup(set_prefix=False)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from imagegen_site.routing import websocket_urlpatterns  # noqa: E402

API_PREFIXES = ("/v1/", "/sdapi/")


class Handler(ASGIHandler):
    """Django's handler; API requests share one thread for their sync steps.

    Django gives each request a thread of its own for its sync steps (signals,
    middleware hooks), kept until the request ends. An API request may wait minutes
    for its image, so 200 waiting requests would keep 200 idle threads. API requests
    run their few sync steps on one shared thread instead; their database work runs on
    the bounded pool of generation.api.waiting, and their wait holds no thread at all.
    """

    api_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="api-sync")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(API_PREFIXES):
            async with ThreadSensitiveContext(executor=self.api_thread):
                await self.handle(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


django_asgi_app = Handler()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
