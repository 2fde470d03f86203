"""The session's generated-and-trained world and the worlds derived from it.

Not a test module (its name keeps pytest from collecting it): conftest.py's fixtures
``shared_world``, ``alert_world`` and ``directory_world`` build these with the real CLI
(``generate``, ``users import``, ``train`` through click's runner); this module holds
their dates, their shape and the steps, so tests can import the dates they score.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from uba.settings import Settings

START = date(2026, 3, 1)
TRAIN_END = date(2026, 3, 8)
WINDOW_DAYS = (TRAIN_END - START).days + 1
SCORE_DATES = (date(2026, 3, 9), date(2026, 3, 10), date(2026, 3, 11))  # generated, never trained on
SCORE_DAY = SCORE_DATES[0]  # first day after training: the baseline snapshot `train` writes is as of it
N_ESTIMATORS = 50
# The settings a derived world trains with (and a run against it uses): the alert world flags
# about 100-200 findings a day; the directory world groups peers by department and role, from 3
# users: whole departments of a population of 80 are mixtures too broad for their device
# shares to differ from everyone's beyond the rarity dead zone, so no peer deviation shows.
ALERT_SETTINGS = (("UBA_MODEL__N_ESTIMATORS", "30"), ("UBA_THRESHOLD__PERCENTILE", "80"))
DIRECTORY_SETTINGS = (("UBA_FEATURES__PEER_MIN_USERS", "3"), ("UBA_FEATURES__PEER_GROUP_BY", "department_role"))
# 80 users so the alert world flags about 100-200 findings a day (delivery batches, export
# volumes), planted user-day anomalies so every alert type (event, user-day, risk) occurs.
GENERATE = ("--users", "80", "--days", str((SCORE_DATES[-1] - START).days + 1), "--start", START.isoformat(),
            "--seed", "5", "--user-day-anomalies", "3")


@dataclass(frozen=True)
class World:
    """Events, a trained bundle and the settings a run against them needs. ``built`` is the
    tree as the CLI left it: ``copy`` starts from there, so a copy never carries what earlier
    tests scored into ``data_dir`` (scoring writes baselines and aggregates there)."""

    root: Path
    version: str
    built: Path
    own_settings: tuple[tuple[str, str], ...] = ()  # UBA_* settings of this world (e.g. peer groups)
    score_dates: tuple[date, ...] = SCORE_DATES

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def model_dir(self) -> Path:
        return self.root / "models"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

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
        from uba.settings import load_settings

        return load_settings(env=self.env(), overrides={"model": dict(model)})

    def copy(self, dest: Path) -> World:
        """This world as built, at ``dest``, for a test that writes into it."""
        shutil.copytree(self.built, dest, symlinks=True)
        return World(dest, self.version, dest, self.own_settings, self.score_dates)


def run_cli(*args: str, env: dict[str, str] | None = None) -> str:
    """``uba-batch ARGS`` in this process (click's runner); fails the caller on a non-zero exit."""
    from click.testing import CliRunner

    from jobs.cli import cli

    result = CliRunner().invoke(cli, list(args), env={"UBA_MODEL__N_ESTIMATORS": str(N_ESTIMATORS), **(env or {})})
    assert result.exit_code == 0, (args[:2], result.output, result.exception)
    return result.output


def train(root: Path, env: dict[str, str] | None = None) -> str:
    """``uba-batch train`` on the days up to TRAIN_END of ``root/data`` into ``root/models``;
    returns the new version (the baseline snapshot it writes is as of SCORE_DAY)."""
    from uba.model.bundle import latest_version

    run_cli("train", "--data-dir", str(root / "data"), "--model-dir", str(root / "models"),
            "--output-dir", str(root / "output"), "--end-date", TRAIN_END.isoformat(),
            "--window-days", str(WINDOW_DAYS), env=env)
    version = latest_version(root / "models")
    assert version is not None
    return version


def build_shared(base: Path) -> World:
    """``generate`` then ``train`` into ``base/built``, once per session; tests get a copy at
    ``base/world`` (scoring writes into the data directory, the built tree stays as built)."""
    built = base / "built"
    run_cli("generate", "--out", str(built / "data"), *GENERATE)
    version = train(built)
    shutil.copytree(built, base / "world", symlinks=True)
    return World(base / "world", version, built)


def directory_export(root: Path) -> Path:
    """The user directory of the shared world's population, as an HR export would list it:
    the same ``generate`` with ``--directory`` writes it (its events are the same too), with
    the mobile-heavy users listed as field staff, a role of their own. In a population of 80
    no generated department/role group is far enough from everyone's device shares to pass
    the peer rarity's 1-nat floor (0.99 at most on seed 5), and the parity test needs some
    non-zero peer device deviations to compare."""
    run_cli("generate", "--out", str(root), *GENERATE, "--directory")
    path = root / "directory" / "users.parquet"
    habits = pl.read_parquet(root / "labels" / "users.parquet").select("user_id", "device_habit")
    field = pl.col("device_habit").is_in(["mobile_heavy", "mobile_only"])
    pl.read_parquet(path).join(habits, on="user_id", how="left").with_columns(
        role=pl.when(field).then(pl.lit("field")).otherwise(pl.col("role"))).drop("device_habit").write_parquet(path)
    return path


def retrained(world: World, root: Path, own_settings: tuple[tuple[str, str], ...],
              before_training: tuple[str, ...] = ()) -> World:
    """A copy of ``world``'s data as built, ``uba-batch BEFORE_TRAINING`` run on it (if
    given), then trained afresh into its own model directory with ``own_settings``."""
    shutil.copytree(world.built / "data", root / "data", symlinks=True)
    if before_training:
        run_cli(*before_training, "--data-dir", str(root / "data"))
    return World(root, train(root, dict(own_settings)), root, own_settings, world.score_dates)


def training_days() -> list[date]:
    return [START + timedelta(days=i) for i in range(WINDOW_DAYS)]
