"""The same event gets the same score and verdict from POST /predict/batch, POST /predict
and `uba-batch score --date`, with per-user thresholds on and off (the global verdict is
compared too)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from api_world import as_payload, running_server
from worlds import SCORE_DAY, run_cli

from uba import io
from uba.features.compiled import PEER_FEATURE_COLUMNS, compile_baselines
from uba.features.events import features_frame

CHUNK = 70  # several batches per day, none at the limit
SINGLE_EVERY = 3  # every third event is also posted alone to /predict


@pytest.mark.parametrize(("per_user", "directory"), [(True, False), (False, False), (True, True)],
                         ids=["per-user-cuts", "global-cut", "directory-peer-features"])
def test_predict_and_predict_batch_match_batch_scoring(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                                                       per_user: bool, directory: bool) -> None:
    source = request.getfixturevalue("directory_world" if directory else "shared_world")
    world = source.copy(tmp_path_factory.mktemp("parity") / "world")
    env = world.env(UBA_USER_THRESHOLDS__ENABLED=str(per_user).lower())
    uba_batch = str(Path(sys.executable).parent / "uba-batch")
    _ingest_off_habit_events(world.data_dir, tmp_path_factory.mktemp("off-habit"))
    run = subprocess.run([uba_batch, "score", "--date", SCORE_DAY.isoformat(), "--workers", "1"],
                         env={**env, "UBA_SCORING__CHUNK_ROWS": "200"}, capture_output=True, text=True,
                         timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    batch = pl.read_parquet(io.partition_files(world.output_dir, io.SCORES, SCORE_DAY))
    snapshot = io.latest_baseline_snapshot(world.data_dir)
    assert snapshot is not None and snapshot[0] == SCORE_DAY  # score wrote the snapshot the API loads

    events = io.scan_events(world.data_dir, SCORE_DAY).collect()
    assert events.height == batch.height > 100
    _assert_peer_features(events, snapshot[1], directory)
    answers: dict[str, dict] = {}
    with running_server(env, tmp_path_factory.mktemp("parity-log") / "api.log") as server, \
            server.client() as client:
        rows = [as_payload(r) for r in events.iter_rows(named=True)]
        for start in range(0, len(rows), CHUNK):
            response = client.post("/predict/batch", json={"events": rows[start:start + CHUNK]})
            assert response.status_code == 200, response.text
            for prediction in response.json()["predictions"]:
                answers[prediction["event_id"]] = prediction
        alone = {}
        for row in rows[::SINGLE_EVERY]:
            response = client.post("/predict", json=row)
            assert response.status_code == 200, response.text
            alone[row["event_id"]] = response.json()
        stranger = client.post("/predict", json={**rows[0], "user_id": "never-seen", "event_id": "x"}).json()
        info = client.get("/model").json()

    assert len(answers) == batch.height
    assert alone and all(alone[e] == answers[e] for e in alone)  # one at a time: the same answer
    flagged = moved = 0
    for row in batch.iter_rows(named=True):
        api = answers[row["event_id"]]
        assert abs(api["anomaly_score"] - row["anomaly_score"]) <= 1e-9, row["event_id"]
        assert api["is_anomaly"] == row["is_anomaly"], row["event_id"]
        assert abs(api["threshold"] - row["user_threshold"]) <= 1e-12, row["event_id"]
        assert api["global_threshold"] == pytest.approx(row["threshold"], abs=1e-12)
        global_verdict = row["anomaly_score"] >= row["threshold"]
        assert (api["anomaly_score"] >= api["global_threshold"]) == global_verdict, row["event_id"]
        moved += global_verdict != row["is_anomaly"]
        assert api["known_user"] == row["known_user"]
        # kinds on every event; sentences where the job writes them (flagged events only)
        assert api["reason_kinds"] == row["reason_kinds"], row["event_id"]
        if row["is_anomaly"]:
            assert api["reasons"] == row["reasons"], row["event_id"]
        else:
            assert row["reasons"] is None and len(api["reasons"]) == len(api["reason_kinds"])
        assert api["model_version"] == row["model_version"] == world.version
        assert api["baseline_as_of"] == SCORE_DAY.isoformat()
        flagged += row["is_anomaly"]
    assert 0 < flagged < batch.height  # the comparison covers both flagged and normal events
    # and the session-length reason phrased against the session's actions
    assert any("usual for" in text for texts in batch["reasons"].drop_nulls().to_list() for text in texts)
    assert stranger["threshold"] == stranger["global_threshold"] == info["threshold"]  # unknown: global cut
    assert info["per_user_thresholds"]["enabled"] is per_user
    if per_user:
        assert moved > 0  # per-user cuts changed some verdicts, so the flag comparison above is not vacuous
        assert info["per_user_thresholds"]["users"] > 0
    else:
        assert moved == 0


def _ingest_off_habit_events(data_dir: Path, tmp: Path) -> None:
    """Copies of some of the day's events (every sixth, and each user's first) twelve hours
    away and on the other device,
    ingested as the day's events: their scores spread between the day's ordinary events and
    its anomalies, so some fall between the global and a user's cut (the per-user case
    compares moved verdicts), and with a directory the peer deviations are not all 0;
    copies of others with sessions six times as long (long for their actions)."""
    day = io.scan_events(data_dir, SCORE_DAY).collect()
    # every sixth event, and each user's first, so every peer group has some moved events
    # (a small group whose device habits differ from everyone's may have a handful a day)
    events = pl.concat([day.gather_every(6), day.filter(pl.int_range(pl.len()).over("user_id") == 0)]) \
        .unique("event_id", keep="first", maintain_order=True)
    hour = (pl.col("hour_of_day") + 12) % 24
    moved = events.with_columns(
        ("off-" + pl.col("event_id")).alias("event_id"),
        hour.alias("hour_of_day"),
        (pl.col("timestamp").dt.truncate("1d") + pl.duration(hours=hour, minutes=pl.col("timestamp").dt.minute()))
        .alias("timestamp"),
        pl.when(pl.col("device_type") == "mobile").then(pl.lit("desktop")).otherwise(pl.lit("mobile"))
        .alias("device_type"),
    ).drop("event_date", strict=False)
    # and copies of others with a session six times as long and as many actions: long for
    # their activity, so the session-length-given-actions feature is not all 0 either
    slow = io.scan_events(data_dir, SCORE_DAY).collect().gather_every(6, offset=3).with_columns(
        ("slow-" + pl.col("event_id")).alias("event_id"),
        (pl.col("session_duration_sec") * 6).alias("session_duration_sec"),
    ).drop("event_date", strict=False)
    pl.concat([moved, slow]).write_parquet(tmp / "off-habit.parquet")
    run_cli("ingest", str(tmp / "off-habit.parquet"), "--data-dir", str(data_dir))  # in process: no start-up to pay


def _assert_peer_features(events: pl.DataFrame, snapshot: Path, directory: bool) -> None:
    """With a directory the snapshot both sides score from has peer statistics and the
    day's events get non-zero peer deviations (so the comparison covers them); without
    one, neither. Either way some events are long for their number of actions."""
    compiled = compile_baselines(io.read_baseline_snapshot(snapshot))
    assert (compiled.peers is not None) is directory
    features = features_frame(events, compiled)
    # sessions long for their number of actions (uba-features-7) are among the compared events
    assert (features["length_for_actions_excess"] > 0).sum() > 0
    if not directory:
        assert not set(PEER_FEATURE_COLUMNS) & set(features.columns)
        return
    for name in ("peer_hour_deviation", "peer_device_rarity"):
        assert (features[name] > 0).sum() > 0, name
