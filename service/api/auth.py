"""Who may call what: the API key on /v1, the admin key on /admin, no key elsewhere.

Every request is classified by path (`access_of`): `/admin` and below need the admin key; the
probes, metrics and docs (`OPEN_PATHS`) need nothing; everything else, `/v1` and any unknown
path, needs the API key when one is configured (default deny). Keys travel as
`Authorization: Bearer <key>` and are compared in constant time (sha256 of both sides, then
`hmac.compare_digest`, so neither content nor length leaks through timing). A key opens only its
own routes: the API key on /admin and the admin key on /v1 are 403 `forbidden`; a missing or
unknown key is 401 `unauthorized`; admin routes with no admin key configured are 403.

`AuthMiddleware` checks before the route runs, so an unauthenticated request never has its body
read or parsed. `API_KEY` / `ADMIN_KEY` are the OpenAPI security schemes the app factory
attaches to the routes, so `/docs` can send the keys; they check nothing themselves.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum

from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.handlers import error_response
from service.errors import ErrorType, ServiceError
from service.settings import Settings

OPEN_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
API_KEY = HTTPBearer(
    scheme_name="apiKey",
    description="UNISERVE_API_KEY, required by /v1 when it is set",
    auto_error=False,
)
ADMIN_KEY = HTTPBearer(
    scheme_name="adminKey", description="UNISERVE_ADMIN_KEY, required by /admin", auto_error=False
)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class Access(StrEnum):
    OPEN = "open"  # probes, metrics, docs
    READ = "read"  # the API: needs the API key when one is set
    ADMIN = "admin"  # reload, rollback: needs the admin key


def access_of(path: str) -> Access:
    """What `path` needs; anything neither admin nor listed as open is treated as the API."""
    if path == "/admin" or path.startswith("/admin/"):
        return Access.ADMIN
    if path in OPEN_PATHS:
        return Access.OPEN
    return Access.READ


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def bearer_token(authorization: str | None) -> str | None:
    """The credential of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class Keys:
    """The configured keys (as digests) and the one check every request goes through."""

    def __init__(self, api_key: str | None, admin_key: str | None) -> None:
        self._api = _digest(api_key) if api_key is not None else None
        self._admin = _digest(admin_key) if admin_key is not None else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Keys:
        return cls(
            settings.api_key.get_secret_value() if settings.api_key else None,
            settings.admin_key.get_secret_value() if settings.admin_key else None,
        )

    def check(self, access: Access, authorization: str | None) -> None:
        """Return when the request may proceed; raise ServiceError (401 or 403) otherwise."""
        if access is Access.OPEN or (access is Access.READ and self._api is None):
            return
        if access is Access.ADMIN and self._admin is None:
            raise ServiceError(
                ErrorType.FORBIDDEN,
                "admin routes are disabled: set UNISERVE_ADMIN_KEY (16+ characters) and send "
                "it as 'Authorization: Bearer <key>'",
            )
        token = bearer_token(authorization)
        digest = _digest(token or "")  # keys are never empty, so "" matches neither
        # Both comparisons always run, over equal-length digests: the time taken says neither
        # how much of a key matched nor which key it was.
        is_api = self._api is not None and hmac.compare_digest(digest, self._api)
        is_admin = self._admin is not None and hmac.compare_digest(digest, self._admin)
        if access is Access.READ:
            if is_api:
                return
            if is_admin:
                raise ServiceError(
                    ErrorType.FORBIDDEN, "the admin key does not open /v1: send the API key"
                )
            name = "UNISERVE_API_KEY"
        else:
            if is_admin:
                return
            if is_api:
                raise ServiceError(
                    ErrorType.FORBIDDEN, "the API key does not open /admin: send the admin key"
                )
            name = "UNISERVE_ADMIN_KEY"
        problem = "no key sent" if token is None else "wrong key"
        raise ServiceError(
            ErrorType.UNAUTHORIZED,
            f"{problem}: send {name} as 'Authorization: Bearer <key>'",
            headers=_CHALLENGE,
        )


class AuthMiddleware:
    """Refuses requests without the key their path needs, before any route reads the body."""

    def __init__(self, app: ASGIApp, keys: Keys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            authorization = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                    break
            try:
                self.keys.check(access_of(scope["path"]), authorization)
            except ServiceError as exc:
                response = error_response(exc.error_type, exc.message, headers=exc.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
