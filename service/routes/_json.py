"""Responses whose body is already serialised JSON (what the serving core and cache hold)."""

from __future__ import annotations

from starlette.responses import Response


def json_bytes(body: bytes, status_code: int = 200) -> Response:
    return Response(body, status_code=status_code, media_type="application/json")
