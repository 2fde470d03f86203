"""Peer groups from the user directory, on generated data written by the CLI.

One world from ``uba-batch generate --directory`` (departments whose habits differ), its
aggregates computed by ``train``. Baselines are compared three ways: no directory (the
population prior, as before peer groups), a directory (each user shrunk toward their
department) and directories built to prove the fallbacks. The peer deviation features
exist only with a directory, and the directory at training fixes a bundle's features:
``score`` and the API refuse the other pairing with one line.

Not on conftest's shared world: it needs a generated user directory (departments whose
habits differ), which fixes the feature set of the model trained on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from api_world import running_server
from click.testing import CliRunner

from jobs.cli import cli
from uba import io
from uba.features.baselines import POPULATION_USER, baseline_columns, peer_groups, user_baselines
from uba.features.compiled import (
    FEATURE_COLUMNS,
    PEER_FEATURE_COLUMNS,
    compile_baselines,
    event_columns,
    feature_arrays,
)
from uba.features.store import snapshot_baselines
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


def _baselines(world: PeerWorld, peers: pl.DataFrame | None, own_only: bool = True,
               **features: object) -> pl.DataFrame:
    """The baselines as of AS_OF; ``own_only``: without the peer groups' habit columns
    (what the shrinkage produced, comparable with the no-directory frame)."""
    settings = load_settings(overrides={"features": features} if features else None, env={})
    days = [START + timedelta(days=k) for k in range(DAYS - 1)]
    aggregates = io.scan_aggregates(world.data_dir, days)
    assert aggregates is not None
    frame = user_baselines(aggregates, AS_OF, settings.features, peers=peers).collect()
    return frame.select(pl.exclude("^peer_.*$")) if own_only else frame


def test_one_group_of_everyone_is_exactly_the_population_prior(world: PeerWorld) -> None:
    """The group statistics are the population's code over the group's users: one group
    holding everyone reproduces the no-directory baselines bit for bit."""
    plain = _baselines(world, None)
    everyone = world.directory.select("user_id", pl.lit("all").alias("peer_group"))
    assert _baselines(world, everyone).equals(plain, null_equal=True)
    # and its "peer group" habits are the population's: no event deviates from them
    full = _baselines(world, everyone, own_only=False)
    assert full.columns == plain.columns + ["peer_hour_mean", "peer_hour_spread", "peer_p_device_desktop",
                                            "peer_p_device_mobile", "peer_p_event_download"]
    users = full.filter(pl.col("user_id") != POPULATION_USER)
    population = full.filter(pl.col("user_id") == POPULATION_USER)
    assert (users["peer_p_device_mobile"] == population["p_device_mobile"]).all()
    assert population.select(pl.col("^peer_.*$").is_null().all()).row(0) == (True,) * 5


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
    assert by_role["peer_group"].str.contains("\x1f").all()
    assert by_role["peer_group"].n_unique() > peer_groups(world.directory, "department")["peer_group"].n_unique()


def test_department_role_groups_keep_names_holding_the_separator_apart() -> None:
    """Groups were "department/role" (no role: "?"): finance/payroll + clerk and finance +
    payroll/clerk shared one peer group, as did a role "?" and no role."""
    directory = pl.DataFrame({"user_id": ["u1", "u2", "u3", "u4", "u5"],
                              "department": ["finance/payroll", "finance", "ops", "ops", None],
                              "role": ["clerk", "payroll/clerk", "?", None, "admin"]})
    groups = peer_groups(directory, "department_role")
    assert groups["user_id"].to_list() == ["u1", "u2", "u3", "u4"]
    assert groups["peer_group"].n_unique() == 4


def _departments(world: PeerWorld) -> dict[str, list[str]]:
    by = world.directory.group_by("department").agg("user_id")
    return dict(zip(by["department"].to_list(), by["user_id"].to_list(), strict=True))


def test_peer_features_measure_the_event_against_the_users_department(world: PeerWorld) -> None:
    """A 13:00 desktop event is ordinary for a finance user and far from the night
    shift's hours for an operations user; a mobile event is rare for operations. A user
    without a department (the population prior) and an unknown user get 0."""
    peers = peer_groups(world.directory, "department")
    lone = _departments(world)["operations"][0]
    compiled = compile_baselines(_baselines(world, peers.filter(pl.col("user_id") != lone), own_only=False))
    assert compiled.feature_columns == (*FEATURE_COLUMNS, *PEER_FEATURE_COLUMNS)
    night, office = _departments(world)["operations"][1], _departments(world)["finance"][0]
    users = [night, office, lone, "nobody-knows-me", night]
    devices = ["desktop", "desktop", "desktop", "desktop", "mobile"]
    hours = [13.0, 13.0, 13.0, 13.0, 2.0]
    columns = event_columns(compiled, users, ["view"] * 5, devices, [600.0] * 5, [5.0] * 5, hours, [2.0] * 5)
    values = feature_arrays(compiled, columns)
    assert values["peer_hour_deviation"][0] > 0 and values["peer_hour_deviation"][1] == 0
    assert values["peer_hour_deviation"][2] == values["peer_hour_deviation"][3] == 0
    assert values["peer_device_rarity"][4] > 0 and values["peer_device_rarity"][:4].tolist() == [0, 0, 0, 0]
    # without a directory there are no peer features at all
    plain = compile_baselines(_baselines(world, None, own_only=False))
    assert plain.peers is None and plain.feature_columns == FEATURE_COLUMNS
    assert not set(PEER_FEATURE_COLUMNS) & set(feature_arrays(plain, event_columns(
        plain, users, ["view"] * 5, devices, [600.0] * 5, [5.0] * 5, hours, [2.0] * 5)))


def _score(data_dir: Path, model_dir: Path, out: Path, expect_ok: bool = True) -> str:
    args = ["score", "--data-dir", str(data_dir), "--output-dir", str(out), "--model-dir", str(model_dir),
            "--date", AS_OF.isoformat()]
    result = CliRunner().invoke(cli, args, env={"UBA_MODEL__N_ESTIMATORS": "30"})
    assert (result.exit_code == 0) is expect_ok, (result.output, result.exception)
    return result.output


def _scores(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "scores" / f"event_date={AS_OF}").sort("event_id") \
        .select("event_id", "anomaly_score", "is_anomaly")


def test_without_a_directory_the_feature_set_and_baselines_are_as_before(world: PeerWorld, tmp_path: Path) -> None:
    """No directory: a bundle of exactly FEATURE_COLUMNS and a snapshot of exactly the
    baseline columns of before; a directory naming no department changes no baseline
    value (the population prior), but it is a directory: the peer features exist (all 0)
    and the bundle trained without one is refused until it is retrained."""
    copy = tmp_path / "data"
    shutil.copytree(world.data_dir, copy)
    shutil.rmtree(copy / "directory")
    shutil.rmtree(copy / "baselines")  # the directory world's snapshot; train writes one without
    plain_models = tmp_path / "models"
    _cli("train", "--data-dir", str(copy), "--model-dir", str(plain_models),
         "--end-date", (AS_OF - timedelta(days=1)).isoformat(), "--window-days", str(DAYS - 1))
    (bundle,) = (p for p in plain_models.iterdir() if p.is_dir())
    body = json.loads((bundle / "bundle.json").read_text())
    assert body["feature_names"] == list(FEATURE_COLUMNS) and body["peer_features"] is False
    snapshot = pl.read_parquet(copy / "baselines" / f"as_of={AS_OF}" / "baselines.parquet")
    categories = load_settings(env={}).events
    assert snapshot.columns == baseline_columns(list(categories.device_types), list(categories.event_types))
    assert compile_baselines(snapshot).peers is None
    _score(copy, plain_models, tmp_path / "none")
    none = _scores(tmp_path / "none")

    # the peer-trained model against no directory: one line, naming the remedy
    refused = _score(copy, world.model_dir, tmp_path / "refused", expect_ok=False)
    assert "trained with peer features" in refused and "uba-batch users import" in refused
    assert len(refused.strip().splitlines()) == 1

    blank = tmp_path / "blank.csv"
    blank.write_text("user_id,department\n" + "".join(f"{u},\n" for u in world.directory["user_id"]))
    _cli("users", "import", str(blank), "--data-dir", str(copy))
    assert _baselines(world, peer_groups(pl.read_csv(blank, schema_overrides={"department": pl.String}),
                                         "department")).equals(_baselines(world, None), null_equal=True)
    refused = _score(copy, plain_models, tmp_path / "refused-2", expect_ok=False)
    assert "trained without peer features" in refused and "retrain" in refused
    assert len(refused.strip().splitlines()) == 1
    # the model of the directory world scores its own world, and differently from the plain one
    _score(world.data_dir, world.model_dir, tmp_path / "departments")
    assert not _scores(tmp_path / "departments")["anomaly_score"].equals(none["anomaly_score"])


@pytest.mark.parametrize("trained_with_directory", [True, False], ids=["peer-model", "plain-model"])
def test_the_api_refuses_a_bundle_and_snapshot_of_different_feature_sets(
        world: PeerWorld, tmp_path: Path, trained_with_directory: bool) -> None:
    """The API loads the newest snapshot: one built without a directory does not go with
    a bundle trained with one (and the reverse); /ready says so in one line."""
    data = tmp_path / "data"
    shutil.copytree(world.data_dir, data)
    models = world.model_dir
    if trained_with_directory:  # a snapshot without peer statistics next to the peer model
        shutil.rmtree(data / "directory")
        snapshot_baselines(data, AS_OF, load_settings(env={}))
        expected = "trained with peer features"
    else:  # a model trained without a directory next to the directory world's snapshot
        plain = tmp_path / "plain"
        shutil.copytree(world.data_dir, plain)
        shutil.rmtree(plain / "directory")
        models = tmp_path / "models"
        _cli("train", "--data-dir", str(plain), "--model-dir", str(models),
             "--end-date", (AS_OF - timedelta(days=1)).isoformat(), "--window-days", str(DAYS - 1))
        expected = "trained without peer features"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UBA_")}
    env.update(UBA_DATA_DIR=str(data), UBA_MODEL_DIR=str(models), UBA_API_KEYS="k-1")
    with running_server(env, tmp_path / "api.log") as server, server.client() as client:
        ready = client.get("/ready", headers={"X-API-Key": "k-1"})
    assert ready.status_code == 503, ready.text
    reason = ready.json()["reason"]
    assert expected in reason and "\n" not in reason, reason


def test_an_api_whose_newest_snapshot_predates_the_directory_names_the_day_to_re_score(
        world: PeerWorld, tmp_path: Path) -> None:
    """Days scored without a directory, then the directory imported and the model retrained
    with it: the API loads the newest snapshot, built before the import, and its /ready
    said "import it (uba-batch users import FILE)", which the operator had just done.
    Re-scoring the snapshot's day rebuilds it with peer groups, and the API is ready."""
    data = tmp_path / "data"
    shutil.copytree(world.data_dir, data)
    shutil.rmtree(data / "directory")
    snapshot_baselines(data, AS_OF, load_settings(env={}))  # the newest day, scored before the import
    exported = tmp_path / "hr-export.csv"
    world.directory.write_csv(exported)
    _cli("users", "import", str(exported), "--data-dir", str(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("UBA_")}
    env.update(UBA_DATA_DIR=str(data), UBA_MODEL_DIR=str(world.model_dir), UBA_API_KEYS="k-1")
    with running_server(env, tmp_path / "api.log") as server, \
            server.client(headers={"X-API-Key": "k-1"}) as client:
        reason = client.get("/ready").json()["reason"]
        assert f"uba-batch score --date {AS_OF}" in reason and "users import" not in reason, reason
        _score(data, world.model_dir, tmp_path / "out")  # what the reason says
        assert client.post("/admin/reload").status_code == 200
        assert client.get("/ready").json()["ready"] is True


def test_a_directory_link_to_nothing_is_refused_by_score_naming_it(world: PeerWorld, tmp_path: Path) -> None:
    """users.parquet as a link to an HR share that is not mounted was taken for "no
    directory": the peer model was refused with "does not exist", and the directory's
    privilege weights and peer groups silently fell away for a model trained without one.
    Now it is one line naming the file, before anything is written."""
    data = tmp_path / "data"
    shutil.copytree(world.data_dir, data)
    users = data / "directory" / "users.parquet"
    users.unlink()
    users.symlink_to(tmp_path / "hr-share" / "users.parquet")
    refused = _score(data, world.model_dir, tmp_path / "out", expect_ok=False)
    assert refused.strip().splitlines() == [
        f"error: {users} is not a regular file (a folder, FIFO or link to nothing is in its place): the user "
        "directory cannot be read there; remove it, then import the directory again (uba-batch users import FILE)"]
    assert not (tmp_path / "out").exists()


def test_a_directory_that_names_none_of_the_users_is_named_by_score(world: PeerWorld, tmp_path: Path) -> None:
    """An HR export keyed by e-mail addresses, imported with --replace: every row valid, no
    user of the events in it, and the runs went on without peer groups or privilege
    weights for anyone, silently (found by an attack: 12 alerts instead of 32 on a
    generated day). Now the manifest says how many of the run's users the directory lists,
    and a run it lists none of warns."""
    data = tmp_path / "data"
    shutil.copytree(world.data_dir, data)
    listed = _score(data, world.model_dir, tmp_path / "listed")
    assert "is in the user directory" not in listed
    coverage = json.loads(io.run_manifest_path(tmp_path / "listed", AS_OF).read_text())["inputs"]["directory"]
    assert coverage["users"] == world.directory.height and 0 < coverage["matched_users"] == coverage["run_users"]
    emails = tmp_path / "hr-export.csv"
    world.directory.with_columns(pl.col("user_id") + "@corp.example").write_csv(emails)
    _cli("users", "import", str(emails), "--replace", "--data-dir", str(data))
    nobody = _score(data, world.model_dir, tmp_path / "nobody")
    assert (f"none of the {coverage['run_users']} users with history before {AS_OF} is in the user directory "
            f"{data / 'directory' / 'users.parquet'} ({world.directory.height} users): its peer groups and risk "
            "weights apply to nobody; is it keyed by another id than the events' user_id? Import one keyed by "
            "user_id (uba-batch users import FILE --replace)") in nobody
    assert json.loads(io.run_manifest_path(tmp_path / "nobody", AS_OF).read_text())["inputs"]["directory"] == {
        "users": world.directory.height, "matched_users": 0, "run_users": coverage["run_users"],
        "sha256": hashlib.sha256((data / "directory" / "users.parquet").read_bytes()).hexdigest()}


def test_a_score_run_uses_one_directory_from_baselines_to_risk(world: PeerWorld, tmp_path: Path) -> None:
    """``users import`` landing while a day is scored: the run read the directory for its
    peer groups, again for its coverage and again for its risk weights, so the day got
    peer groups from one directory and privilege weights from the next, and its manifest
    named neither. Now it reads the directory once: the run stops itself at its first
    shard part (after the baselines, before risk; test hook UBA_FAULT_STOP_AT), the test
    imports a directory making everyone unprivileged and of low criticality (this day's one
    user at risk is a privileged admin), and the day's risk is
    exactly that of a run that never saw the import, its manifest naming the first file."""
    import hashlib
    import signal
    import subprocess
    import sys

    from waiting import stopped, wait_until

    users = "directory/users.parquet"
    before = hashlib.sha256((world.data_dir / users).read_bytes()).hexdigest()
    _score(world.data_dir, world.model_dir, tmp_path / "reference")
    everyone = tmp_path / "nobody-privileged.csv"
    world.directory.with_columns(pl.lit(False).alias("is_privileged"), pl.lit("low").alias("criticality")) \
        .write_csv(everyone)
    data = tmp_path / "data"
    shutil.copytree(world.data_dir, data)
    batch = str(Path(sys.executable).with_name("uba-batch"))
    run = subprocess.Popen([batch, "score", "--date", AS_OF.isoformat(), "--data-dir", str(data), "--output-dir",
                            str(tmp_path / "out"), "--model-dir", str(world.model_dir), "--in-process"],
                           env={**os.environ, "UBA_MODEL__N_ESTIMATORS": "30", "UBA_FAULT_STOP_AT": "staged_part"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: run.poll() is not None or stopped(run.pid), 300, "the run to stop at its first part")
        assert run.poll() is None, run.communicate()[0][-2000:]
        _cli("users", "import", str(everyone), "--replace", "--data-dir", str(data))
        while run.poll() is None:  # it stops again at each staged part
            if stopped(run.pid):
                run.send_signal(signal.SIGCONT)
            wait_until(lambda: run.poll() is not None or stopped(run.pid), 300, "the run to go on")
    finally:
        if run.poll() is None:
            run.kill()
    assert run.wait(timeout=60) == 0, run.communicate()[0][-2000:]

    def risk(out: Path) -> pl.DataFrame:
        return pl.read_parquet(out / "risk" / f"event_date={AS_OF}").sort("user_id")

    assert risk(tmp_path / "out").equals(risk(tmp_path / "reference"))
    manifest = json.loads(io.run_manifest_path(tmp_path / "out", AS_OF).read_text())
    assert manifest["inputs"]["directory"]["sha256"] == before
    # the import does change the day's risk: the next run, with it, scores it lower
    after = hashlib.sha256((data / users).read_bytes()).hexdigest()
    assert after != before
    _score(data, world.model_dir, tmp_path / "again")
    again = risk(tmp_path / "again").join(risk(tmp_path / "reference"), on="user_id", suffix="_before")
    assert (again["risk_score"] <= again["risk_score_before"]).all()
    assert (again["risk_score"] < again["risk_score_before"]).any()
    assert json.loads(io.run_manifest_path(tmp_path / "again", AS_OF).read_text())["inputs"]["directory"]["sha256"] \
        == after
