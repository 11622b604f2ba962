"""WhiteNoise, able to run in the async request path; and what a page answers while the
database is away."""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db import connection
from django.http import HttpResponse
from django.shortcuts import render
from django.template import loader
from django.utils.deprecation import MiddlewareMixin
from whitenoise.middleware import WhiteNoiseMiddleware

from generation.forms import JobForm
from generation.outages import DATABASE, OUTAGES, kind_of

DATABASE_AWAY = "The server cannot reach its database just now. Please try again in a moment."
PROMPT_KEPT = "The server cannot reach its database; your prompt is still in the box."


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise's middleware, also async.

    WhiteNoise's own is sync only, so under ASGI Django ran it, and everything after
    it, the view included, on a thread for the whole request: an async API view
    waiting minutes for its image would have held a thread all that time. Finding a
    static file is a dictionary lookup (or, with autorefresh in DEBUG, a stat), cheap
    enough for the event loop.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response=None, *args, **kwargs):
        super().__init__(get_response, *args, **kwargs)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request):
        static_file = self.find_file(request.path_info) if self.autorefresh else self.files.get(request.path_info)
        if static_file is not None:
            return self.serve(static_file, request)
        return await self.get_response(request)


class DatabaseOutageMiddleware(MiddlewareMixin):
    """A view that cannot reach the database answers 503 with a plain sentence, not 500.

    Last in MIDDLEWARE, so its `process_exception` sees a view's exception before any
    other middleware. Pages get the error page; the composer's fetch gets its form back
    with the prompt in it and the sentence on it. The outage is logged once when it
    starts (`OUTAGES`), not as a traceback per request, and once when a request has a
    working connection again.
    """

    def __call__(self, request):
        if self.async_mode:
            # An async view's database work runs on other threads: pages and the WebSocket note the outage's end.
            return self.__acall__(request)
        response = self.get_response(request)
        if OUTAGES.down(DATABASE) and response.status_code != 503 and _had_a_working_connection():
            OUTAGES.answered(DATABASE)
        return response

    def process_exception(self, request, exception):
        if kind_of(exception) != DATABASE:
            return None
        OUTAGES.failed(exception, doing=f"answering {request.method} {request.path}")
        _check_pooled_connections()
        match = request.resolver_match
        if match is not None and match.view_name == "chat:job_submit" and _is_fetch(request):
            response = _prompt_kept(request, conversation_id=match.kwargs["conversation_id"])
        else:
            context = {"code": "503", "heading": "Service unavailable", "sentence": DATABASE_AWAY}
            # Without the request: the page shows no account menu, which would read the session.
            response = HttpResponse(loader.render_to_string("_error_page.html", context), status=503)
        # Django logs every 5xx answer; the outage is logged once, when it starts.
        response._has_been_logged = True
        return response


def _check_pooled_connections() -> None:
    """Have the pool test every idle connection now, dropping the broken ones.

    After a restart of the database all of them are broken. The pool drops one when it
    is about to lend it, then pauses (1 s, then 2 s) before trying the next, so a request
    would get through a few before its DATABASE_POOL_TIMEOUT ran out, and the next
    request a few more. Checked here, they go at once, in milliseconds.
    """
    pool = getattr(connection, "pool", None)  # PostgreSQL with DATABASE_POOL_MAX_SIZE
    if pool is not None:
        pool.check()


def _had_a_working_connection() -> bool:
    # The pool checks a connection before lending it: one lent, without errors since, worked.
    return connection.connection is not None and not connection.errors_occurred


def _is_fetch(request) -> bool:
    return request.headers.get("X-Requested-With") == "fetch"


def _prompt_kept(request, *, conversation_id: int) -> HttpResponse:
    """The composer as chat's job_submit renders a refused prompt: the sentence on it, the prompt in it."""
    form = JobForm(data=request.POST)
    form.add_error(None, PROMPT_KEPT)
    context = {"form": form, "conversation": {"pk": conversation_id}}
    return render(request, "chat/_prompt_form.html", context, status=503)
