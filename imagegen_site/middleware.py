"""WhiteNoise, able to run in the async request path."""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from whitenoise.middleware import WhiteNoiseMiddleware


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
