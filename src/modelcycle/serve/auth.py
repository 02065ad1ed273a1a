"""Optional API key: ``Authorization: Bearer <key>``, the key read from an environment variable
so it never sits in a command line (visible in ``ps``) or a config file."""

from __future__ import annotations

import hmac
import os

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from modelcycle.errors import UserError

_bearer = HTTPBearer(auto_error=False, description="The key in the server's --api-key-env variable.")


def read_api_key(env: str | None) -> str | None:
    if env is None:
        return None
    key = os.environ.get(env, "")
    if not key.strip():
        raise UserError(f"--api-key-env {env}: the environment variable {env} is unset or empty; export {env}=<key>")
    return key.strip()


def require_key(key: str):
    """A FastAPI dependency: 401 unless the Bearer header matches ``key``."""

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), key.encode()):  # constant time: no timing oracle
            raise HTTPException(
                401,
                "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check
