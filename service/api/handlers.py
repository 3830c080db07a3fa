"""The JSON error shape on the wire: every error response is `{"error": <readable message>,
"error_type": <ErrorType>}` with the status `service.errors.status_code` gives. The handlers
installed by `install_error_handlers` render `ServiceError`, FastAPI's validation errors and
Starlette's HTTP errors (unknown route, wrong method) in that shape. Unexpected exceptions become
500 `internal` in `service.api.middleware`, which also logs them.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any, cast

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service.errors import ErrorType, ServiceError, status_code, validation_message


def _error_type_of_status(status: int) -> ErrorType:
    """Best error type for an HTTP status raised by the framework (not by our code)."""
    for error_type in ErrorType:
        if status_code(error_type) == status and error_type is not ErrorType.UNKNOWN_USER:
            return error_type
    return ErrorType.INTERNAL if status >= 500 else ErrorType.INVALID_INPUT


def error_response(
    error_type: ErrorType, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The one JSON error response; also an ASGI app, so middleware can send it directly."""
    body = orjson.dumps({"error": message, "error_type": error_type.value})
    return Response(
        body, status_code=status_code(error_type), media_type="application/json", headers=headers
    )


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
