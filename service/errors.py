"""The closed set of error types and their status codes (in one place), `ServiceError`, and the
readable one-line message of a list of validation problems. No HTTP framework here: the serving
core raises `ServiceError`, and `service.api.handlers` renders it (and FastAPI's and Starlette's
own errors) as the one JSON error shape `{"error", "error_type"}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any


class ErrorType(StrEnum):
    INVALID_INPUT = "invalid_input"
    UNKNOWN_USER = "unknown_user"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNAUTHORIZED = "unauthorized"  # an admin route without the right bearer token
    FORBIDDEN = "forbidden"  # admin routes are off: no admin token is configured
    INDEX_REJECTED = "index_rejected"  # a reload or rollback refused the index version
    # a valid request this replica cannot serve in its current state: mode "multi" without a
    # multi-vector index, a local-index operation asked of a router, a shard search sent by a
    # router whose model the live index was not built for
    UNSERVABLE = "unservable"
    # a catalogue upsert or retirement would take the live delta over UNISERVE_DELTA_MAX_ITEMS
    DELTA_FULL = "delta_full"
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
        case ErrorType.INDEX_REJECTED | ErrorType.UNSERVABLE | ErrorType.DELTA_FULL:
            return 409
        case ErrorType.TOO_LARGE:
            return 413
        case ErrorType.OVERLOADED:
            return 429
        case ErrorType.NOT_READY | ErrorType.BACKEND_UNAVAILABLE:
            return 503
        case ErrorType.INTERNAL:
            return 500


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
