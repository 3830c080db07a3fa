"""The closed set of error types, their status codes (in one place), and the JSON error shape.

Every error response is `{"error": <readable message>, "error_type": <ErrorType>}`. The core
raises `ServiceError`; the handlers installed by `install_error_handlers` translate it, FastAPI's
validation errors and Starlette's HTTP errors (unknown route, wrong method) into that shape.
Unexpected exceptions become 500 `internal` in `service.middleware`, which also logs them.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from enum import StrEnum
from typing import Any, cast

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response


class ErrorType(StrEnum):
    INVALID_INPUT = "invalid_input"
    UNKNOWN_USER = "unknown_user"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNAUTHORIZED = "unauthorized"  # an admin route without the right bearer token
    FORBIDDEN = "forbidden"  # admin routes are off: no admin token is configured
    INDEX_REJECTED = "index_rejected"  # a reload or rollback refused the index version
    TOO_LARGE = "too_large"
    OVERLOADED = "overloaded"
    NOT_READY = "not_ready"
    BACKEND_UNAVAILABLE = "backend_unavailable"  # a store the request needs (Redis) is down
    INTERNAL = "internal"


def status_code(error_type: ErrorType) -> int:
    """The HTTP status of an error type: the only place this mapping lives."""
    match error_type:
        case ErrorType.INVALID_INPUT:
            return 422
        case ErrorType.UNKNOWN_USER | ErrorType.NOT_FOUND:
            return 404
        case ErrorType.METHOD_NOT_ALLOWED:
            return 405
        case ErrorType.UNAUTHORIZED:
            return 401
        case ErrorType.FORBIDDEN:
            return 403
        case ErrorType.INDEX_REJECTED:
            return 409
        case ErrorType.TOO_LARGE:
            return 413
        case ErrorType.OVERLOADED:
            return 429
        case ErrorType.NOT_READY | ErrorType.BACKEND_UNAVAILABLE:
            return 503
        case ErrorType.INTERNAL:
            return 500


def _error_type_of_status(status: int) -> ErrorType:
    """Best error type for an HTTP status raised by the framework (not by our code)."""
    for error_type in ErrorType:
        if status_code(error_type) == status and error_type is not ErrorType.UNKNOWN_USER:
            return error_type
    return ErrorType.INTERNAL if status >= 500 else ErrorType.INVALID_INPUT


class ServiceError(Exception):
    """An expected failure with a type from the closed set and a message for the caller."""

    def __init__(
        self, error_type: ErrorType, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.headers = headers  # e.g. WWW-Authenticate on 401

    @property
    def status_code(self) -> int:
        return status_code(self.error_type)


def error_response(
    error_type: ErrorType, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The one JSON error response; also an ASGI app, so middleware can send it directly."""
    body = orjson.dumps({"error": message, "error_type": error_type.value})
    return Response(
        body, status_code=status_code(error_type), media_type="application/json", headers=headers
    )


_MAX_REPORTED = 5  # validation problems quoted in one message


def _where(loc: Sequence[Any]) -> str:
    """("body", "events", 3, "item_id") -> "events[3].item_id"; the body itself -> "body"."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _describe(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "")
        return f"request body is not valid JSON ({reason})" if reason else "invalid JSON"
    where = _where(error.get("loc", ()))
    if kind == "extra_forbidden":
        return f"{where}: unknown field"
    if kind == "missing":
        return "request body is required" if where == "body" else f"{where}: field required"
    return f"{where}: {error.get('msg', 'invalid value')}"


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """One readable line naming each bad field, e.g. "k: Input should be greater than 0"."""
    parts = [_describe(e) for e in errors[:_MAX_REPORTED]]
    if len(errors) > _MAX_REPORTED:
        parts.append(f"... and {len(errors) - _MAX_REPORTED} more")
    return "; ".join(parts) or "invalid request"


# Scope key where the error handler leaves the error type, for the metrics middleware.
ERROR_TYPE_SCOPE_KEY = "uniserve.error_type"


def service_error_response(scope: MutableMapping[str, Any], error: ServiceError) -> Response:
    """The answer to `error`, its type left in `scope` for the metrics middleware."""
    scope[ERROR_TYPE_SCOPE_KEY] = error.error_type.value
    return error_response(error.error_type, error.message, headers=error.headers)


async def _service_error(request: Request, exc: Exception) -> Response:
    return service_error_response(request.scope, cast(ServiceError, exc))


async def _validation_error(request: Request, exc: Exception) -> Response:
    content_type = request.headers.get("content-type", "")
    if request.method in ("POST", "PUT", "PATCH") and "json" not in content_type.lower():
        # FastAPI does not parse a body without a JSON content type: say so, not "not an object"
        message = (
            f"send the body as JSON with Content-Type: application/json (got {content_type!r})"
        )
        return error_response(ErrorType.INVALID_INPUT, message)
    errors = cast(RequestValidationError, exc).errors()
    return error_response(ErrorType.INVALID_INPUT, validation_message(errors))


async def _http_error(request: Request, exc: Exception) -> Response:
    http_exc = cast(StarletteHTTPException, exc)
    error_type = _error_type_of_status(http_exc.status_code)
    if error_type is ErrorType.NOT_FOUND:
        message = f"no route {request.url.path!r}"
    elif error_type is ErrorType.METHOD_NOT_ALLOWED:
        message = f"method {request.method} is not allowed on {request.url.path!r}"
    else:
        message = str(http_exc.detail)
    return error_response(error_type, message, headers=http_exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
