"""The HTTP APIs that existing clients speak: OpenAI Images and AUTOMATIC1111.

Thin adapters over generation.services: a request becomes jobs in the one global queue
(the same validation, caps and positions as the chat page), and the answer waits for
them without holding a thread or a database connection (see `waiting`).
"""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from generation.outages import DATABASE, OUTAGES, kind_of

# While the database is away, a client is asked to try again after this many seconds:
# the web process gives up on the database within DATABASE_POOL_TIMEOUT (3 s) and
# opens a connection again within a couple of seconds of its return.
OUTAGE_RETRY_AFTER = 5
DATABASE_AWAY = "The server cannot reach its database just now; please try again in a few seconds."


def api_view(error: type[ApiFailure]):
    """Make an async view an API view answering in the shape of `error` (its ApiError).

    The view is CSRF-exempt (a key, not a cookie, authenticates). An ApiFailure it
    raises is answered as it says; a failure to reach the database is answered 503
    with `Retry-After`, and the outage is logged once, not once per request.
    """

    def decorate(view):
        async def wrapped(request, *args, **kwargs):
            try:
                return await view(request, *args, **kwargs)
            except ApiFailure as exc:
                return exc.response()
            except Exception as exc:
                if kind_of(exc) != DATABASE:
                    raise
                OUTAGES.failed(exc, doing=f"answering {request.method} {request.path}")
                response = error.unavailable(DATABASE_AWAY, retry_after=OUTAGE_RETRY_AFTER).response()
                # Django logs every 5xx answer; the outage is logged once, when it starts.
                response._has_been_logged = True
                return response

        wrapped.__name__ = view.__name__
        wrapped.__doc__ = view.__doc__
        return csrf_exempt(wrapped)

    return decorate


class ApiFailure(Exception):
    """A request an API refuses: `body`, in that API's error shape, sent as JSON with
    `status` and `headers`."""

    def __init__(self, status: int, body: dict, *, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.body, self.headers = status, body, headers or {}

    @classmethod
    def unavailable(cls, message: str, *, retry_after: int) -> ApiFailure:
        """A 503 in this API's shape, to try again after `retry_after` seconds."""
        raise NotImplementedError

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body, status=self.status)
        for name, value in self.headers.items():
            response[name] = value
        return response
