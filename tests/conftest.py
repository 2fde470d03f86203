"""Shared fixtures. Each block says who uses it; add new fixtures below, do not rewrite."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest

# --- batch scoring: one Ray runtime per session, one trained data set ----------

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
INTEGRATION_FIXTURES = frozenset({"ray_runtime", "trained_dataset", "scoring_settings", "alert_world"})


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

SCORING_START = date(2026, 3, 1)
SCORING_TRAIN_END = date(2026, 3, 8)
SCORING_DATES = (date(2026, 3, 9), date(2026, 3, 10))


@dataclass(frozen=True)
class TrainedDataset:
    """Generated events + a model trained on their first days, for scoring tests."""

    root: Path
    data_dir: Path
    model_dir: Path
    version: str
    score_dates: tuple[date, ...]


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


@pytest.fixture(scope="session")
def trained_dataset(tmp_path_factory: pytest.TempPathFactory) -> TrainedDataset:
    """A small generated data set and a bundle trained with the real CLI, made once."""
    from click.testing import CliRunner

    from jobs.cli import cli
    from uba.model.bundle import latest_version

    root = tmp_path_factory.mktemp("trained")
    data_dir, model_dir = root / "data", root / "models"
    days = (SCORING_DATES[-1] - SCORING_START).days + 1
    runner = CliRunner()
    for args in (
        ["generate", "--out", str(data_dir), "--users", "40", "--days", str(days),
         "--start", SCORING_START.isoformat(), "--seed", "11"],
        ["train", "--data-dir", str(data_dir), "--end-date", SCORING_TRAIN_END.isoformat(),
         "--window-days", str((SCORING_TRAIN_END - SCORING_START).days + 1), "--model-dir", str(model_dir)],
    ):
        result = runner.invoke(cli, args, env={"UBA_MODEL__N_ESTIMATORS": "50"})
        assert result.exit_code == 0, (args[0], result.output, result.exception)
    version = latest_version(model_dir)
    assert version is not None
    return TrainedDataset(root, data_dir, model_dir, version, SCORING_DATES)


@pytest.fixture
def scoring_settings(trained_dataset: TrainedDataset) -> Callable[..., Any]:
    """Settings for scoring the trained data set into ``output_dir``; extra kwargs are
    section overrides, e.g. ``ray={"max_retries": 0}``."""
    from uba.settings import load_settings

    def make(output_dir: Path, **sections: dict[str, Any]) -> Any:
        overrides: dict[str, dict[str, Any]] = {"paths": {
            "data_dir": trained_dataset.data_dir, "model_dir": trained_dataset.model_dir,
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


# --- alert delivery: a small trained world with ~300 alerts over three days -----

ALERT_START = date(2026, 3, 1)
ALERT_TRAIN_END = date(2026, 3, 8)
ALERT_DAYS = (date(2026, 3, 9), date(2026, 3, 10), date(2026, 3, 11))


@dataclass(frozen=True)
class AlertWorld:
    """Generated events and a model whose threshold (80th percentile) flags about 100
    findings a day; tests copy ``data_dir`` (the delivery ledger lives there)."""

    data_dir: Path
    model_dir: Path
    days: tuple[date, ...]


@pytest.fixture(scope="session")
def alert_world(tmp_path_factory: pytest.TempPathFactory) -> AlertWorld:
    from click.testing import CliRunner

    from jobs.cli import cli

    root = tmp_path_factory.mktemp("alert-world")
    data_dir, model_dir = root / "data", root / "models"
    days = (ALERT_DAYS[-1] - ALERT_START).days + 1
    for args in (
        ["generate", "--out", str(data_dir), "--users", "80", "--days", str(days), "--start",
         ALERT_START.isoformat(), "--seed", "5", "--user-day-anomalies", "3"],
        ["train", "--data-dir", str(data_dir), "--end-date", ALERT_TRAIN_END.isoformat(), "--window-days",
         str((ALERT_TRAIN_END - ALERT_START).days + 1), "--model-dir", str(model_dir)],
    ):
        result = CliRunner().invoke(cli, args, env={"UBA_MODEL__N_ESTIMATORS": "30",
                                                    "UBA_THRESHOLD__PERCENTILE": "80"})
        assert result.exit_code == 0, (args[0], result.output, result.exception)
    return AlertWorld(data_dir, model_dir, ALERT_DAYS)
