"""Shared builders for the API tests: a tiny real world and a real uvicorn server.

Not a test module (its name keeps pytest from collecting it). The world is made
by the product's own functions: ``write_generated`` (generate + ingest), the feature
store (aggregates, baselines, snapshot), ``event_features``, ``fit_detector`` and
``save_bundle``, i.e. what ``uba-batch train`` does, with a small forest for speed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest
from waiting import wait_until

from uba import io
from uba.features import ensure_aggregates, event_features, snapshot_baselines
from uba.features.compiled import feature_columns
from uba.features.events import FEATURE_SET_VERSION, has_peer_statistics
from uba.generate import GenerationOptions
from uba.generate.store import write_generated
from uba.model.bundle import save_bundle
from uba.model.forest import fit_detector
from uba.settings import Settings, load_settings

START = date(2026, 3, 2)
TRAIN_DAYS = 7
SCORE_DAY = START + timedelta(days=TRAIN_DAYS)  # first day after training: the snapshot's as_of
N_ESTIMATORS = 60
SEED_PAYLOAD = {
    "user_id": 123, "event_type": "login", "session_duration_sec": 18000,
    "events_in_session": 190, "hour_of_day": 2, "day_of_week": 1, "device_type": "desktop",
}
SEED_FIELDS = ("anomaly_score", "is_anomaly", "threshold_percentile")
EXTRA_FIELDS = ("threshold", "model_version", "baseline_as_of", "known_user", "reasons", "reason_kinds")


@dataclass(frozen=True)
class World:
    root: Path
    data_dir: Path
    model_dir: Path
    output_dir: Path
    version: str
    training_matrix: Path
    own_settings: tuple[tuple[str, str], ...] = ()  # UBA_* settings of this world (e.g. peer groups)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a server or CLI run against this world (settings via UBA_*)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("UBA_")}
        env.update(UBA_DATA_DIR=str(self.data_dir), UBA_MODEL_DIR=str(self.model_dir),
                   UBA_OUTPUT_DIR=str(self.output_dir), UBA_MODEL__N_ESTIMATORS=str(N_ESTIMATORS),
                   RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
        env.update(dict(self.own_settings))
        env.update(extra)
        return env

    def settings(self, **model: object) -> Settings:
        return load_settings(env=self.env(), overrides={"model": dict(model)})

    def copy(self, dest: Path) -> World:
        shutil.copytree(self.root, dest)
        return World(dest, dest / "data", dest / "models", dest / "output", self.version,
                     dest / self.training_matrix.relative_to(self.root), self.own_settings)


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


def training_days() -> list[date]:
    return [START + timedelta(days=i) for i in range(TRAIN_DAYS)]


def build_world(root: Path, users: int = 30, seed: int = 11, directory: bool = False) -> World:
    """A world; ``directory``: with the generated user directory (peer features on), in
    peer groups of at least 3 users so a world this small has some, and more injected
    anomalies so some events deviate from their group."""
    own = (("UBA_FEATURES__PEER_MIN_USERS", "3"),) if directory else ()
    world = World(root, root / "data", root / "models", root / "output", "", root / "train.npy", own)
    settings = world.settings()
    options = GenerationOptions(users=users, days=TRAIN_DAYS + 1, start=START, seed=seed,
                                anomaly_rate=0.1 if directory else 0.02)
    write_generated(options, world.data_dir, settings, with_directory=directory)
    days = training_days()
    ensure_aggregates(world.data_dir, [*days, SCORE_DAY], settings.events)
    baselines, _ = snapshot_baselines(world.data_dir, SCORE_DAY, settings)
    version, X = train_bundle(settings, days, baselines)
    np.save(world.training_matrix, X)
    return World(root, world.data_dir, world.model_dir, world.output_dir, version, world.training_matrix, own)


_WORLDS: dict[str, World] = {}


def shared_world(tmp_path_factory: pytest.TempPathFactory, directory: bool = False) -> World:
    """One world per test session (it costs seconds); tests that change it take a copy.
    ``directory``: the world with a user directory (a separate one)."""
    key = "directory" if directory else "world"
    if key not in _WORLDS:
        _WORLDS[key] = build_world(tmp_path_factory.mktemp(f"api-{key}"), directory=directory)
    return _WORLDS[key]


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
