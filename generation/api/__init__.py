"""The HTTP APIs that existing clients speak: OpenAI Images and AUTOMATIC1111.

Thin adapters over generation.services: a request becomes jobs in the one global queue
(the same validation, caps and positions as the chat page), and the answer waits for
them without holding a thread or a database connection (see `waiting`).
"""

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt


def api_view(view):
    """An async API view: CSRF-exempt (a key, not a cookie, authenticates), and an
    error it raises (each API's ApiError, an ApiFailure) answered in that API's shape."""

    async def wrapped(request, *args, **kwargs):
        try:
            return await view(request, *args, **kwargs)
        except ApiFailure as exc:
            return exc.response()

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return csrf_exempt(wrapped)


class ApiFailure(Exception):
    """A request an API refuses: `body`, in that API's error shape, sent as JSON with
    `status` and `headers`."""

    def __init__(self, status: int, body: dict, *, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.body, self.headers = status, body, headers or {}

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body, status=self.status)
        for name, value in self.headers.items():
            response[name] = value
        return response
