"""Peer groups from the user directory (issue 14, item 2), on generated data written by the CLI.

One world from ``uba-batch generate --directory`` (departments whose habits differ), its
aggregates computed by ``train``. Baselines are compared three ways: no directory (the
population prior, as before peer groups), a directory (each user shrunk toward their
department) and directories built to prove the fallbacks.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from uba import io
from uba.features.baselines import peer_groups, user_baselines
from uba.settings import load_settings

START = date(2026, 3, 1)
DAYS = 10
AS_OF = START + timedelta(days=DAYS - 1)


@dataclass(frozen=True)
class PeerWorld:
    data_dir: Path
    model_dir: Path

    @property
    def directory(self) -> pl.DataFrame:
        return pl.read_parquet(self.data_dir / "directory" / "users.parquet")


def _cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), env={"UBA_MODEL__N_ESTIMATORS": "30"})
    assert result.exit_code == 0, (args[:3], result.output, result.exception)
    return result.output


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> PeerWorld:
    root = tmp_path_factory.mktemp("peers")
    data_dir, model_dir = root / "data", root / "models"
    _cli("generate", "--out", str(data_dir), "--users", "120", "--days", str(DAYS), "--start",
         START.isoformat(), "--seed", "5", "--directory")
    _cli("train", "--data-dir", str(data_dir), "--model-dir", str(model_dir),
         "--end-date", (AS_OF - timedelta(days=1)).isoformat(), "--window-days", str(DAYS - 1))
    return PeerWorld(data_dir, model_dir)


def _baselines(world: PeerWorld, peers: pl.DataFrame | None, **features: object) -> pl.DataFrame:
    settings = load_settings(overrides={"features": features} if features else None, env={})
    days = [START + timedelta(days=k) for k in range(DAYS - 1)]
    aggregates = io.scan_aggregates(world.data_dir, days)
    assert aggregates is not None
    return user_baselines(aggregates, AS_OF, settings.features, peers=peers).collect()


def test_one_group_of_everyone_is_exactly_the_population_prior(world: PeerWorld) -> None:
    """The group statistics are the population's code over the group's users: one group
    holding everyone reproduces the no-directory baselines bit for bit."""
    plain = _baselines(world, None)
    everyone = world.directory.select("user_id", pl.lit("all").alias("peer_group"))
    assert _baselines(world, everyone).equals(plain, null_equal=True)


def test_groups_below_the_minimum_size_fall_back_to_the_population(world: PeerWorld) -> None:
    plain = _baselines(world, None)
    peers = peer_groups(world.directory, "department")
    largest = peers.group_by("peer_group").len()["len"].max()
    assert isinstance(largest, int)
    assert _baselines(world, peers, peer_min_users=largest + 1).equals(plain, null_equal=True)
    shrunk = _baselines(world, peers)
    assert not shrunk.equals(plain)
    # a user with no department keeps the population prior even when the others have groups
    lone = world.directory["user_id"][0]
    without = peers.filter(pl.col("user_id") != lone)
    row = _baselines(world, without).filter(pl.col("user_id") == lone)
    assert row.equals(plain.filter(pl.col("user_id") == lone), null_equal=True)


def test_a_user_with_little_history_is_shrunk_toward_their_department(world: PeerWorld) -> None:
    """The mean session length of a user seen on few days lies between their own and
    their prior's: closer to the department's mean than without peers whenever the
    department's mean is further from the population's than the user's own."""
    peers = peer_groups(world.directory, "department")
    plain, shrunk = _baselines(world, None), _baselines(world, peers)
    stat = "mean_log_duration"
    both = plain.join(shrunk, on="user_id", suffix="_peer").join(peers, on="user_id")
    groups = both.group_by("peer_group").agg(pl.col("raw_mean_log_duration").mean().alias("group_mean"))
    moved = both.join(groups, on="peer_group").with_columns(
        before=(pl.col(stat) - pl.col("group_mean")).abs(), after=(pl.col(f"{stat}_peer") - pl.col("group_mean")).abs())
    # users pulled (partly) toward their group: the typical user ends closer to it
    assert (moved["after"] < moved["before"]).mean() > 0.6
    # the weights of the user's own history do not depend on the prior's location
    assert both["shrink_weight"].equals(both["shrink_weight_peer"])


def test_department_role_groups_split_departments(world: PeerWorld) -> None:
    by_role = peer_groups(world.directory, "department_role")
    assert by_role["peer_group"].str.contains("/").all()
    assert by_role["peer_group"].n_unique() > peer_groups(world.directory, "department")["peer_group"].n_unique()


def test_score_without_a_directory_is_unchanged_by_the_peer_code(world: PeerWorld, tmp_path: Path) -> None:
    """Through ``score``: a data directory with no directory and one whose directory names
    no department give byte-identical scores (both use the population prior); naming
    departments changes the baselines, hence the scores."""
    copy = tmp_path / "data"
    shutil.copytree(world.data_dir, copy)
    shutil.rmtree(copy / "directory")
    common = ["--model-dir", str(world.model_dir), "--date", AS_OF.isoformat()]

    def scores(data_dir: Path, name: str) -> pl.DataFrame:
        out = tmp_path / name
        _cli("score", "--data-dir", str(data_dir), "--output-dir", str(out), *common)
        return pl.read_parquet(out / "scores" / f"event_date={AS_OF}").sort("event_id") \
            .select("event_id", "anomaly_score", "is_anomaly")

    none = scores(copy, "none")
    blank = tmp_path / "blank.csv"
    blank.write_text("user_id,department\n" + "".join(f"{u},\n" for u in world.directory["user_id"]))
    _cli("users", "import", str(blank), "--data-dir", str(copy))
    assert scores(copy, "blank").equals(none)
    assert not scores(world.data_dir, "departments")["anomaly_score"].equals(none["anomaly_score"])
