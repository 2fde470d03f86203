"""``X-UBA-Signature``: HMAC-SHA256 over a timestamp and the body, so receivers can refuse
forged and replayed requests.

Header: ``t=<unix seconds>,v1=<hex>[,v1=<hex>]``, each ``v1`` the HMAC-SHA256 of
``f"{t}.{body}"`` under one active secret. Two secrets are active while one is rotated:
the sender signs with both, the receiver accepts a request when any ``v1`` matches any
secret it knows and ``t`` is within its replay window. ``verify_signature`` is the
reference a receiver can copy (docs/alerting.md shows it).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

HEADER = "X-UBA-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE_SEC = 300


def _mac(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secrets: Sequence[bytes], timestamp: int | None = None) -> str:
    """The header value for ``body``, one ``v1`` per secret (in the order given)."""
    if not secrets:
        raise ValueError("signing needs at least one secret")
    t = int(time.time()) if timestamp is None else int(timestamp)
    return ",".join([f"t={t}", *(f"{SCHEME}={_mac(s, t, body)}" for s in secrets)])


def parse_signature(header: str) -> tuple[int, list[str]]:
    """``(t, [v1, ...])`` of a header; ValueError when it is not one of ours."""
    timestamp: int | None = None
    macs: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise ValueError(f"malformed signature element {item!r}")
        if key == "t":
            if timestamp is not None or not value.isdigit():
                raise ValueError("the signature needs exactly one numeric t=")
            timestamp = int(value)
        elif key == SCHEME:
            macs.append(value)
    if timestamp is None or not macs:
        raise ValueError("the signature needs t= and at least one v1=")
    return timestamp, macs


def verify_signature(header: str | None, body: bytes, secrets: Sequence[bytes], now: float | None = None,
                     tolerance_sec: float = DEFAULT_TOLERANCE_SEC) -> bool:
    """True when ``header`` signs ``body`` with one of ``secrets`` and ``t`` is within
    ``tolerance_sec`` of ``now`` (both ways: a clock ahead is as suspect as a replay).

    Comparisons are constant-time. A receiver should also drop a repeated
    ``X-UBA-Delivery-Id`` or alert id it has already stored: retries are legitimate and
    carry the same ids (at-least-once delivery)."""
    if not header:
        return False
    try:
        timestamp, macs = parse_signature(header)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_sec:
        return False
    expected = [_mac(secret, timestamp, body) for secret in secrets]
    return any(hmac.compare_digest(mac, want) for mac in macs for want in expected)
