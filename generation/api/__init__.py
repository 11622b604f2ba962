"""The HTTP APIs that existing clients speak: OpenAI Images and AUTOMATIC1111.

Thin adapters over generation.services: a request becomes jobs in the one global queue
(the same validation, caps and positions as the chat page), and the answer waits for
them without holding a thread or a database connection (see `waiting`).
"""


def api_view(view):
    """An async API view: CSRF-exempt (a key, not a cookie, authenticates), and an
    error it raises (anything with a `response()`: each API's ApiError) answered in
    that API's shape."""
    from django.views.decorators.csrf import csrf_exempt

    async def wrapped(request, *args, **kwargs):
        try:
            return await view(request, *args, **kwargs)
        except ApiFailure as exc:
            return exc.response()

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return csrf_exempt(wrapped)


class ApiFailure(Exception):
    """A request an API refuses; `response()` answers it in that API's shape."""

    def response(self):
        raise NotImplementedError
