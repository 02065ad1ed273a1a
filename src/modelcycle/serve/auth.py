"""Optional API key: ``Authorization: Bearer <key>``, the key read from an environment variable
so it never sits in a command line (visible in ``ps``) or a config file."""

from __future__ import annotations

import hmac
import os

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from modelcycle.errors import UserError

_bearer = HTTPBearer(auto_error=False, description="The key in the server's --api-key-env variable.")


def read_api_key(env: str | None) -> str | None:
    if env is None:
        return None
    key = os.environ.get(env, "")
    if not key.strip():
        raise UserError(f"--api-key-env {env}: the environment variable {env} is unset or empty; export {env}=<key>")
    return key.strip()


def check_key(given: str, key: str) -> None:
    """401 unless ``given`` is ``key``."""
    if not hmac.compare_digest(given.encode(), key.encode()):  # constant time: no timing oracle
        raise HTTPException(
            401,
            "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


def check_header(authorization: str | None, key: str) -> None:
    """:func:`check_key` on a raw Authorization header, read as HTTPBearer reads it (for routes
    outside FastAPI's dependency machinery)."""
    scheme, credentials = get_authorization_scheme_param(authorization)
    check_key(credentials if scheme.lower() == "bearer" else "", key)


def require_key(key: str):
    """A FastAPI dependency: 401 unless the Bearer header matches ``key``."""

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        check_key(credentials.credentials if credentials else "", key)

    return check
