"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext, iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.urls import Resolver404, get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagegen_site.settings")
# Django must be set up before anything imports models.
django.setup(set_prefix=False)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from imagegen_site.routing import websocket_urlpatterns  # noqa: E402

API_PREFIXES = ("/v1/", "/sdapi/")


class Handler(ASGIHandler):
    """Django's handler, with fewer thread hops and a bounded set of threads.

    - A page request's sync steps run on one of WEB_THREADS threads of the process,
      borrowed for the request and given back. Django would start a thread per
      request: a burst of 200 requests made 200 threads fighting for one core,
      which cost more than the requests themselves. A request that finds every
      thread busy waits on the event loop, holding nothing, for the next one.
    - A sync view's request runs its whole middleware chain in Django's sync mode,
      as a WSGI server would: one hop to its thread. Our middleware is sync (Django's
      own, whitenoise), and in the async chain each of its hooks is a hop from the
      event loop to the thread and back, about fifteen a request.
    - An async view (the APIs) keeps Django's async chain, so its wait, which may
      last minutes, holds no thread. API requests run their few sync steps on one
      shared thread; their database work runs on the bounded pool of
      generation.api.waiting.
    """

    api_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="api-sync")

    def __init__(self):
        super().__init__()
        self.sync_handler = BaseHandler()
        self.sync_handler.load_middleware(is_async=False)
        self.threads: asyncio.Queue | None = None  # made on the event loop, at first use

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)  # Django refuses it
        elif scope["path"].startswith(API_PREFIXES):
            async with ThreadSensitiveContext(executor=self.api_thread):
                await self.handle(scope, receive, send)
        else:
            thread = await self._borrow_thread()
            try:
                async with ThreadSensitiveContext(executor=thread):
                    await self.handle(scope, receive, send)
            finally:
                self.threads.put_nowait(thread)

    async def _borrow_thread(self) -> ThreadPoolExecutor:
        if self.threads is None:
            self.threads = asyncio.Queue()
            for _ in range(settings.WEB_THREADS):
                self.threads.put_nowait(ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-sync"))
        return await self.threads.get()

    async def get_response_async(self, request):
        if self._view_is_async(request):
            return await super().get_response_async(request)
        return await sync_to_async(self.sync_handler.get_response, thread_sensitive=True)(request)

    @staticmethod
    def _view_is_async(request) -> bool:
        try:
            match = get_resolver(getattr(request, "urlconf", None)).resolve(request.path_info)
        except Resolver404:
            return False  # Django's 404 and the slash redirect are sync
        return iscoroutinefunction(match.func)


django_asgi_app = Handler()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
