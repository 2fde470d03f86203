"""Shared helpers for the API tests: a real uvicorn server against a world, and a second
bundle trained quickly on a world's data.

Not a test module (its name keeps pytest from collecting it). The worlds themselves are
conftest.py's session fixtures (``shared_world``, ``directory_world``), built with the real
CLI (tests/worlds.py).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
from waiting import wait_until

from uba import io
from uba.features import event_features
from uba.features.compiled import feature_columns
from uba.features.events import FEATURE_SET_VERSION, has_peer_statistics
from uba.model.bundle import save_bundle
from uba.model.forest import fit_detector
from uba.settings import Settings

SEED_PAYLOAD = {
    "user_id": 123, "event_type": "login", "session_duration_sec": 18000,
    "events_in_session": 190, "hour_of_day": 2, "day_of_week": 1, "device_type": "desktop",
}
SEED_FIELDS = ("anomaly_score", "is_anomaly", "threshold_percentile")
EXTRA_FIELDS = ("threshold", "model_version", "baseline_as_of", "known_user", "reasons", "reason_kinds")


def train_bundle(settings: Settings, days: list[date], baselines: pl.DataFrame) -> tuple[str, np.ndarray]:
    """Fit and save a bundle on the events of ``days`` (what ``train`` does); returns version and X.

    For speed every training day is featurised against one baseline frame (the
    snapshot's), not a rolling one per day: the API tests need a real bundle of real
    features, not a leak-free evaluation.
    """
    data_dir = settings.paths.data_dir
    events = pl.concat([io.scan_events(data_dir, d) for d in days], how="vertical")
    features = event_features(events, baselines.lazy()).collect()
    peers = has_peer_statistics(baselines)  # a directory at training: the peer features too
    names = feature_columns(peers)
    X = np.ascontiguousarray(features.select(list(names)).to_numpy(), dtype=np.float64)
    detector, _ = fit_detector(X, names, settings.model, settings.threshold.percentile)
    metadata = {
        "feature_set_version": FEATURE_SET_VERSION,
        "peer_features": peers,
        "training_window": {"start": days[0].isoformat(), "end": days[-1].isoformat()},
        "rows": {"training": int(features.height)},
    }
    return save_bundle(settings.paths.model_dir, detector, metadata), X


def as_payload(row: dict[str, Any]) -> dict[str, Any]:
    """A stored event as a client would post it (timestamp plus the derived hour/day)."""
    payload = {k: row[k] for k in ("event_id", "user_id", "event_type", "session_duration_sec",
                                   "events_in_session", "device_type", "hour_of_day", "day_of_week")}
    payload["timestamp"] = row["timestamp"].isoformat()
    if row.get("session_id"):
        payload["session_id"] = row["session_id"]
    return payload


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]


# uvicorn names the port it bound (port 0 asks the kernel for a free one) in this line.
STARTED_LINE = re.compile(rb"Uvicorn running on (http://127\.0\.0\.1:\d+)")


@contextmanager
def running_server(env: dict[str, str], log: Path, timeout: float = 30.0,
                   uba_api: list[str] | None = None) -> Iterator[Server]:
    """``uvicorn uba.api.app:app`` (or ``uba-api`` with these flags) on loopback port 0, so
    the server itself takes a free port (no bind-then-release race); the URL comes from its
    startup line. Stopped by its own pid."""
    if uba_api is None:
        cmd = [sys.executable, "-m", "uvicorn", "uba.api.app:app", "--host", "127.0.0.1",
               "--port", "0", "--no-access-log"]
    else:
        cmd = [str(Path(sys.executable).parent / "uba-api"), "--host", "127.0.0.1", "--port", "0", *uba_api]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        server = Server(started_url(process, log, timeout), process, log)
        wait_for_health(server, timeout)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def started_url(process: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> str:
    """The base URL a uvicorn started with ``--port 0`` on 127.0.0.1 names in its startup line."""
    def named() -> str | None:
        match = STARTED_LINE.search(log.read_bytes())
        if match:
            return match.group(1).decode()
        _assert_running(process, log)
        return None

    return wait_until(named, timeout, f"the server's startup line in {log}")


def _assert_running(process: subprocess.Popen[bytes], log: Path) -> None:
    assert process.poll() is None, f"server exited with {process.returncode}:\n{log.read_text()}"


def wait_for_health(server: Server, timeout: float) -> None:
    def healthy() -> bool:
        _assert_running(server.process, server.log)
        try:
            return httpx.get(server.url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, timeout, f"{server.url}/health to answer 200 (log {server.log})")
