"""Optional API-key check (header ``X-API-Key``).

Keys come from the environment variable named by ``api.api_keys_env`` (comma-separated)
and/or the file ``api.api_key_file`` (one key per line or comma-separated, ``#`` starts
a comment). No key configured means the API is open, which suits a loopback or
mesh-protected deployment; a key file that is configured but unreadable or empty is an
error at startup, because silently running open would be the wrong failure.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from fastapi import HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from uba.errors import UserError
from uba.settings import ApiSettings

API_KEY_HEADER = "X-API-Key"
api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False,
    description="Required when the server is configured with API keys.",
)


def _split_keys(text: str) -> list[str]:
    keys: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        keys.extend(part.strip() for part in line.split(","))
    return [k for k in keys if k]


def _keys_from_file(path: Path) -> list[str]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"cannot read api.api_key_file {path}: {exc.strerror or exc}") from exc
    keys = _split_keys(text)
    if not keys:
        raise UserError(f"api.api_key_file {path} holds no keys")
    return keys


def load_api_keys(api: ApiSettings, env: Mapping[str, str] | None = None) -> tuple[bytes, ...]:
    """All configured keys as bytes (what ``hmac.compare_digest`` compares); empty = open API."""
    env = os.environ if env is None else env
    keys = _split_keys(env.get(api.api_keys_env, "")) if api.api_keys_env else []
    if api.api_key_file is not None:
        keys.extend(_keys_from_file(api.api_key_file))
    return tuple(dict.fromkeys(k.encode() for k in keys))


def key_is_valid(candidate: str, keys: tuple[bytes, ...]) -> bool:
    """Constant-time comparison against every key (no early exit that would leak which matched)."""
    given = candidate.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return matched


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def require_api_key(request: Request, api_key: str | None = Security(api_key_header)) -> None:
    """Router dependency of every protected route: :func:`authorize` (the key, then the body)."""
    await authorize(request, api_key)


async def authorize(request: Request, api_key: str | None) -> None:
    """401 unless the key matches (when keys are configured), then the body is read under the cap.

    Nothing of the body is read or sized before the key is checked (the cap is applied
    as the body is read, ``uba.api.middleware.BodyLimitMiddleware``). Reading it here,
    inside the matched route, makes a body over ``api.max_body_bytes`` a 413 on every
    protected route, also on those that ignore their body (``/admin/reload``), and
    labels it with the route's template in the metrics; the route's own body dependency
    then gets the bytes already read. The scoring routes call this directly
    (``uba.api.direct``), the others through :func:`require_api_key`.
    """
    keys: tuple[bytes, ...] = request.app.state.runtime.api_keys
    if keys and (not api_key or not key_is_valid(api_key, keys)):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail=[{"field": API_KEY_HEADER, "message": "missing or invalid API key", "value": None}],
            headers={"WWW-Authenticate": API_KEY_HEADER},
        )
    if request.method in _BODY_METHODS:
        await request.body()


async def require_configured_key(request: Request) -> None:
    """403 on an API without keys: routes that change analysts' records (triage, verdicts,
    suppression rules) are never open, whatever suits scoring on a loopback deployment."""
    if not request.app.state.runtime.api_keys:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail=[{"field": API_KEY_HEADER, "value": None,
                     "message": "this route needs the server to be configured with API keys "
                                "(api.api_keys_env or api.api_key_file); `uba-batch alerts` works without"}],
        )
