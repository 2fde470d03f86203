"""Shared fixtures. Each block says who uses it; add new fixtures below, do not rewrite."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from worlds import (
    ALERT_SETTINGS,
    DIRECTORY_SETTINGS,
    World,
    build_shared,
    directory_export,
    retrained,
)

# --- batch scoring: one Ray runtime per session ------------------------------------------

# Days of a few hundred events are far below ray.min_rows_for_ray, so by default they would
# all run in-process; the suite runs them on Ray (the path with workers, retries and
# faults to test) unless a test sets the threshold itself (test_score_cli checks the default).
SUITE_MIN_ROWS_FOR_RAY = "0"


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("UBA_RAY__MIN_ROWS_FOR_RAY", SUITE_MIN_ROWS_FOR_RAY)


# --- test tiers: `make test-fast` runs `-m unit`, `make test` runs every tier ----------------
# unit: in-process, no Ray, no server, no subprocess, well under a second each.
# integration: real Ray, real uvicorn, real files through the CLI and subprocesses.
# deploy: nginx, kustomize, the Dockerfile, chromium.
# A test marked with a tier keeps it; otherwise its module decides, and a test of a unit
# module that asks for a shared world or a Ray runtime is integration. A module not listed
# here is integration, so a new file never slows the fast tier by accident.
TIERS = ("unit", "integration", "deploy")
UNIT_MODULES = frozenset({
    "test_alert_delivery_units", "test_architecture_rules", "test_api_metrics_labels", "test_artifacts", "test_drift", "test_evaluate_users",
    "test_features", "test_features_compiled", "test_forest_kernel", "test_generate", "test_ingest",
    "test_io_integrity", "test_model", "test_plan", "test_reasons", "test_reasons_oracle", "test_risk",
    "test_settings", "test_thresholds", "test_userday", "test_validate",
})
DEPLOY_MODULES = frozenset({"test_deploy_docker", "test_deploy_k8s", "test_deploy_nginx"})
INTEGRATION_FIXTURES = frozenset({"ray_runtime", "shared_world", "scoring_settings", "serving_world", "alert_world", "directory_world"})


def tier_of(item: pytest.Item) -> str:
    """The tier a collected test runs in (see the block comment above)."""
    explicit = [tier for tier in TIERS if item.get_closest_marker(tier) is not None]
    if explicit:
        return explicit[0]
    module = item.nodeid.split("::", 1)[0].rpartition("/")[2].removesuffix(".py")
    if module in DEPLOY_MODULES:
        return "deploy"
    if module in UNIT_MODULES and not INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "unit"
    return "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item)
        if item.get_closest_marker(tier) is None:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def _matplotlib_font_list() -> None:
    """matplotlib lists the system fonts on first use by running ``fc-list``, a subprocess the
    unit guard below refuses; where that list is not cached yet (a new machine, an empty
    MPLCONFIGDIR) the first unit test that draws a chart failed. Listed here, outside any test."""
    import matplotlib.font_manager  # noqa: F401


@pytest.fixture(autouse=True)
def _unit_tier_stays_in_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit-tier test that starts a subprocess or listens on a socket fails, naming the tier
    it belongs in, so `make test-fast` keeps the promise of the block comment above."""
    if request.node.get_closest_marker("unit") is None:
        return
    request.getfixturevalue("_matplotlib_font_list")
    import socket
    import subprocess

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"{request.node.nodeid} is in the unit tier but {what}: "
                                 "mark it @pytest.mark.integration")
        return refused

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("starts a subprocess"))
    monkeypatch.setattr(socket.socket, "bind", refuse("listens on a socket (a server)"))


# Tests that need a Debian package skip themselves when it is missing; `make test` on a
# laptop then ends by saying which and how to run them (.ci/run installs the packages).
SYSTEM_PACKAGES = {"nginx": "nginx", "openssl": "openssl", "chromium": "chromium", "rsyslog": "rsyslog"}
INSTALL_HINT = "sudo apt-get update && sudo apt-get install -y nginx openssl gettext-base chromium rsyslog"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    tests, packages = 0, set()
    for report in terminalreporter.stats.get("skipped", []):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        wanted = {package for word, package in SYSTEM_PACKAGES.items() if word in reason}
        tests += bool(wanted)
        packages |= wanted
    if tests:
        terminalreporter.write_line(f"{tests} tests skipped for want of system packages ({', '.join(sorted(packages))}); "
                                    f"to run them too: {INSTALL_HINT}", yellow=True)

@pytest.fixture(scope="session")
def ray_runtime() -> Iterator[None]:
    """One local Ray runtime for the whole session (ray.init costs ~5 s), on loopback."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, _node_ip_address="127.0.0.1", namespace="uba-tests")
        started = True
    yield
    if started:
        ray.shutdown()


# --- the session's world: generated and trained once with the real CLI ------------------
# Every integration test that needs events and a trained bundle uses ``shared_world`` (or a
# copy of it); a test that needs something the shared world lacks uses a world derived from
# its data below. Dates and steps: tests/worlds.py. Who uses which:
#   shared_world: scoring, score CLI, crash recovery, I/O integrity, Ray cluster, CLI errors,
#     hostile batch, risk CLI, feedback, nginx; its copies: API workers, not-ready paths.
#     Scoring tests write baselines and aggregates into its data_dir (as scoring does).
#   serving_world: the API server, serving, ops, hardening, hostile API and bundle/config
#     tests, the compiled-feature and reason oracles (they read its baseline snapshot).
#   alert_world: alert delivery, syslog, export, triage (each copies data_dir first: the
#     delivery ledger and the triage table live there).
#   directory_world: API parity's peer-feature case.


@pytest.fixture(scope="session")
def shared_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """80 users over 11 days with planted user-day anomalies, trained on the first 8 (`generate`, `train`)."""
    return build_shared(tmp_path_factory.mktemp("shared-world"))


@pytest.fixture(scope="session")
def serving_world(shared_world: World, tmp_path_factory: pytest.TempPathFactory) -> World:
    """The shared world as built, only read: the API serves the latest baseline snapshot, which scoring into ``shared_world`` moves on."""
    return shared_world.copy(tmp_path_factory.mktemp("serving-world") / "world")


@pytest.fixture(scope="session")
def alert_world(shared_world: World, tmp_path_factory: pytest.TempPathFactory) -> World:
    """The shared data retrained to flag at the 80th percentile (~100 alerts a day): delivery, export and triage need many alerts."""
    return retrained(shared_world, tmp_path_factory.mktemp("alert-world"), ALERT_SETTINGS)


@pytest.fixture(scope="session")
def directory_world(shared_world: World, tmp_path_factory: pytest.TempPathFactory) -> World:
    """The shared data with its population's user directory imported (`users import`) and retrained: peer features on."""
    root = tmp_path_factory.mktemp("directory-world")
    export = directory_export(root / "hr-export")
    return retrained(shared_world, root, DIRECTORY_SETTINGS, before_training=("users", "import", str(export)))


@pytest.fixture
def scoring_settings(shared_world: World) -> Callable[..., Any]:
    """Settings for scoring the shared world into ``output_dir``; extra kwargs are
    section overrides, e.g. ``ray={"max_retries": 0}``."""
    from uba.settings import load_settings

    def make(output_dir: Path, **sections: dict[str, Any]) -> Any:
        overrides: dict[str, dict[str, Any]] = {"paths": {
            "data_dir": shared_world.data_dir, "model_dir": shared_world.model_dir,
            "output_dir": output_dir}}
        sections = {"ray": {"min_rows_for_ray": int(SUITE_MIN_ROWS_FOR_RAY)}, **sections}
        sections["ray"] = {"min_rows_for_ray": int(SUITE_MIN_ROWS_FOR_RAY), **sections["ray"]}
        overrides.update(sections)
        return load_settings(overrides=overrides, env={})

    return make


@pytest.fixture
def day_output_bytes() -> Callable[[Path, date], dict[str, bytes]]:
    """Every published part of one scored day (scores/ and flagged/), by relative path
    (the hidden ``.version`` link of a published day is not a part)."""
    from uba import io

    def read(output_dir: Path, day: date) -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        for dataset in (io.SCORES, io.FLAGGED):
            folder = io.partition_dir(output_dir, dataset, day)
            for path in sorted(folder.glob("*.parquet")):
                files[f"{dataset}/{path.name}"] = path.read_bytes()
        return files

    return read
