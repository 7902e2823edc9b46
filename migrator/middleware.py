"""Request bodies larger than anything the dashboard accepts are refused
before Django parses them (certificates are at most 64 KB). A TLS proxy in
front should cap them too (nginx: client_max_body_size), since the ASGI
server reads a body before this runs."""

from django.conf import settings
from django.http import HttpResponse


class RequestSizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.REQUEST_MAX_BODY_BYTES
        if length > limit:
            return HttpResponse(
                f"The request is too large ({length // 1024} KB; the dashboard accepts at most {limit // 1024} KB).",
                status=413,
                content_type="text/plain; charset=utf-8",
            )
        return self.get_response(request)
