"""Every API error is JSON with a plain message: `{"detail": "..."}`, plus
`"errors": {field: [messages]}` when a form refused fields (the same
messages as the browser's form). A refusal from the migration actions is a
409 with its message."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


class FormRefused(exceptions.APIException):
    """A form's field errors, as the browser would show them."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid"

    def __init__(self, errors: dict[str, list[str]], detail: str | None = None) -> None:
        self.errors = errors
        first = next((f"{field}: {msgs[0]}" for field, msgs in errors.items() if msgs), "")
        first = first.removeprefix("non_field_errors: ").removeprefix("__all__: ")
        super().__init__(detail or first or "The request was refused.")


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


def form_errors(form) -> dict[str, list[str]]:
    """A Django form's errors with `__all__` named `non_field_errors`, as DRF names it."""
    return {("non_field_errors" if k == "__all__" else k): [str(m) for m in v] for k, v in form.errors.items()}


def handle(exc, context):
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("There is no such object, or your role does not show it.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or "Your role does not allow this.")
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, FormRefused):
        response.data = {"detail": str(exc.detail), "errors": exc.errors}
    elif isinstance(exc, exceptions.ValidationError):
        data = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        errors = {k: [str(m) for m in (v if isinstance(v, list) else [v])] for k, v in data.items()}
        first = next((f"{k}: {v[0]}" for k, v in errors.items() if v), "The request was refused.")
        response.data = {"detail": first.removeprefix("non_field_errors: "), "errors": errors}
    elif isinstance(response.data, dict) and "detail" in response.data:
        response.data = {"detail": str(response.data["detail"])}
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        response.data["retry_after_s"] = int(exc.wait)
    return response


def refused(message: str, code: int = status.HTTP_409_CONFLICT) -> Response:
    return Response({"detail": message}, status=code)
