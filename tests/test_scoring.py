"""Batch scoring of one day through the library: Ray and in-process give the same bytes,
every event is scored once, outputs carry what DESIGN.md promises, runs are locked."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from uba import io
from uba.errors import UserError
from uba.features import baselines_as_of
from uba.features.events import FEATURE_COLUMNS, event_features
from uba.locks import RunLockedError, date_lock, lock_path
from uba.model.bundle import load_bundle
from uba.scoring.driver import ScoreOptions, score_day
from uba.scoring.outputs import SCORE_COLUMNS, in_score_order, score_rows

CONTRACT_COLUMNS = {"event_id", "user_id", "timestamp", "anomaly_score", "is_anomaly", "threshold",
                    "model_version", "reasons"}


def _events(data_dir: Path, day: date) -> pl.DataFrame:
    return io.scan_events(data_dir, day).collect()


def _scores(output_dir: Path, day: date) -> pl.DataFrame:
    return pl.read_parquet(io.partition_files(output_dir, io.SCORES, day))


def _flagged(output_dir: Path, day: date) -> pl.DataFrame:
    return pl.read_parquet(io.partition_files(output_dir, io.FLAGGED, day))


def test_ray_and_in_process_publish_identical_bytes(shared_world, ray_runtime, scoring_settings,
                                                     day_output_bytes, tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    rows = io.partition_row_count(shared_world.data_dir, io.EVENTS, day)
    small = {"chunk_rows": max(1, rows // 3)}
    on_ray = score_day(scoring_settings(tmp_path / "ray", scoring=small), ScoreOptions(day=day, workers=2))
    local = score_day(scoring_settings(tmp_path / "local", scoring=small), ScoreOptions(day=day, in_process=True))

    assert on_ray["execution"]["mode"] == "local" and on_ray["execution"]["workers"] == 2
    assert on_ray["execution"]["shards"] == local["execution"]["shards"] >= 3
    assert local["execution"]["mode"] == "in-process"
    records = on_ray["execution"]["shard_records"]
    assert [r["index"] for r in records] == list(range(on_ray["execution"]["shards"]))
    assert sum(r["rows"] for r in records) == rows
    assert len({r["pid"] for r in records}) >= 1 and all(r["node_id"] != "driver" for r in records)
    # the shared inputs crossed to each worker once, not once per shard
    assert sum(r["fetched_inputs"] for r in records) <= len({r["pid"] for r in records})
    ray_files = day_output_bytes(tmp_path / "ray", day)
    assert {"scores/part-00000.parquet", "scores/part-00002.parquet", "flagged/part-00000.parquet"} <= set(ray_files)
    assert ray_files == day_output_bytes(tmp_path / "local", day)
    assert on_ray["outputs"]["scores"]["files"] == local["outputs"]["scores"]["files"]
    # the manifest's checksums describe the published files
    for name, meta in on_ray["outputs"]["scores"]["files"].items():
        assert io.file_sha256(io.partition_dir(tmp_path / "ray", io.SCORES, day) / name) == meta["sha256"]


def test_every_event_is_scored_once_and_the_manifest_says_so(shared_world, ray_runtime,
                                                             scoring_settings, tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    manifest = score_day(scoring_settings(tmp_path), ScoreOptions(day=day))
    events = _events(shared_world.data_dir, day)
    scores = _scores(tmp_path, day)

    assert set(scores.columns) >= CONTRACT_COLUMNS and tuple(scores.columns) == SCORE_COLUMNS
    assert scores.height == events.height > 0
    assert sorted(scores["event_id"]) == sorted(events["event_id"])
    counts = manifest["counts"]
    assert counts["input_rows"] == counts["scored_rows"] == events.height
    assert counts["quarantined_rows"] == io.partition_row_count(shared_world.data_dir, io.QUARANTINE, day)
    assert manifest["row_conservation"] == {
        "input_rows": events.height, "scored_rows": events.height,
        "quarantined_rows": counts["quarantined_rows"],
        "received_rows": events.height + counts["quarantined_rows"], "ok": True}
    assert manifest["status"] == "succeeded" and manifest["error"] is None
    assert io.read_run_manifest(tmp_path, day) == manifest
    assert set(manifest["timings_sec"]) >= {"plan", "aggregates", "baselines", "shards", "merge_flagged",
                                            "publish"}
    for record in manifest["execution"]["shard_records"]:
        assert set(record["seconds"]) == {"read", "features", "scoring", "decide_explain", "write"}


def test_scores_flags_and_reasons_follow_the_model(shared_world, ray_runtime, scoring_settings,
                                                   tmp_path: Path) -> None:
    day = shared_world.score_dates[0]  # the shared world's day with flagged rows (not every day has)
    manifest = score_day(scoring_settings(tmp_path), ScoreOptions(day=day))
    bundle = load_bundle(shared_world.model_dir)
    scores = _scores(tmp_path, day)
    flagged = _flagged(tmp_path, day)

    assert (scores["threshold"] == bundle.detector.threshold).all()
    assert (scores["model_version"] == bundle.version).all()
    assert scores["is_anomaly"].to_list() == (scores["anomaly_score"] >= bundle.detector.threshold).to_list()
    assert scores["anomaly_score"].is_between(0.0, 1.0, closed="right").all()
    assert flagged.height == manifest["counts"]["flagged_rows"] == int(scores["is_anomaly"].sum())
    assert sorted(flagged["event_id"]) == sorted(scores.filter("is_anomaly")["event_id"])
    assert flagged["anomaly_score"].to_list() == sorted(flagged["anomaly_score"], reverse=True)
    assert flagged.height > 0  # so the reasons of flagged rows below are checked
    assert flagged["reasons"].list.len().to_list() == flagged["reason_kinds"].list.len().to_list()
    assert flagged["reasons"].list.len().max() >= 1
    assert {"baseline_history_days", "usual_hours", "user_median_session_sec"} <= set(flagged.columns)
    assert flagged["usual_hours"].str.contains(r"^\d\d:00-\d\d:00$").all()
    # sentences where an analyst reads them (flagged rows), cheap kind codes on every row
    ordinary = scores.filter(~pl.col("is_anomaly"))
    assert ordinary["reasons"].null_count() == ordinary.height > 0
    assert ordinary["reason_kinds"].null_count() == 0 and ordinary["reason_kinds"].list.len().max() >= 1
    assert scores.filter("is_anomaly")["reasons"].null_count() == 0


def test_a_batch_score_equals_the_single_event_score(shared_world, ray_runtime, scoring_settings,
                                                     tmp_path: Path) -> None:
    """The API's path (one event, the snapshot as of D) gives the job's score."""
    day = shared_world.score_dates[0]
    score_day(scoring_settings(tmp_path), ScoreOptions(day=day))
    scores = _scores(tmp_path, day).sort("anomaly_score", descending=True)
    snapshot = pl.read_parquet(shared_world.data_dir / "baselines" / f"as_of={day}" / "baselines.parquet")
    bundle = load_bundle(shared_world.model_dir)
    events = _events(shared_world.data_dir, day)
    for event_id in scores["event_id"].head(3).to_list() + scores["event_id"].tail(2).to_list():
        one = events.filter(pl.col("event_id") == event_id)
        features = event_features(one.lazy(), snapshot.lazy()).collect()
        expected = bundle.detector.anomaly_score(features.select(FEATURE_COLUMNS).row(0))
        got = scores.filter(pl.col("event_id") == event_id)["anomaly_score"].item()
        assert got == pytest.approx(expected, rel=0, abs=1e-12)


def test_the_snapshot_of_d_matches_baselines_as_of_d(shared_world, scoring_settings, tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    settings = scoring_settings(tmp_path)
    score_day(settings, ScoreOptions(day=day, in_process=True))
    snapshot = pl.read_parquet(shared_world.data_dir / "baselines" / f"as_of={day}" / "baselines.parquet")
    expected = baselines_as_of(shared_world.data_dir, day, settings).collect()
    assert snapshot.sort("user_id").equals(expected.sort("user_id"))


def test_chunked_day_gives_the_same_rows_in_more_parts(shared_world, scoring_settings, tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    whole = score_day(scoring_settings(tmp_path / "whole"), ScoreOptions(day=day, in_process=True))
    rows = whole["counts"]["input_rows"]
    chunk_rows = max(1, rows // 3)
    chunked = score_day(scoring_settings(tmp_path / "chunked", scoring={"chunk_rows": chunk_rows}),
                        ScoreOptions(day=day, in_process=True))
    assert chunked["execution"]["chunks"] == chunked["execution"]["shards"]
    files = io.partition_files(shared_world.data_dir, io.EVENTS, day)
    assert chunked["execution"]["shards"] >= max(len(files), math.ceil(rows / chunk_rows)) >= 3
    assert len(io.partition_files(tmp_path / "chunked", io.SCORES, day)) == chunked["execution"]["chunks"]
    a = _scores(tmp_path / "whole", day).sort("event_id")
    b = _scores(tmp_path / "chunked", day).sort("event_id")
    assert a.equals(b)
    assert _flagged(tmp_path / "whole", day).equals(_flagged(tmp_path / "chunked", day))
    assert chunked["row_conservation"]["ok"] and chunked["counts"]["scored_rows"] == rows


def test_small_days_run_in_process_and_say_why(shared_world, scoring_settings, tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    settings = scoring_settings(tmp_path, ray={"min_rows_for_ray": 10_000_000})
    manifest = score_day(settings, ScoreOptions(day=day))
    assert manifest["execution"]["mode"] == "in-process"
    assert "min_rows_for_ray" in manifest["execution"]["reason"]


def test_rerun_replaces_the_day_with_identical_bytes(shared_world, scoring_settings, day_output_bytes,
                                                      tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    settings = scoring_settings(tmp_path)
    first = score_day(settings, ScoreOptions(day=day, in_process=True))
    before = day_output_bytes(tmp_path, day)
    second = score_day(settings, ScoreOptions(day=day, in_process=True))
    assert day_output_bytes(tmp_path, day) == before
    assert second["run_id"] != first["run_id"]
    assert not (tmp_path / ".staging").exists() or not any((tmp_path / ".staging").rglob("*.parquet"))


def test_missing_partition_is_a_user_error_that_touches_no_output(shared_world, scoring_settings,
                                                                  tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no events partition for 2020-01-01"):
        score_day(scoring_settings(tmp_path / "out"), ScoreOptions(day=date(2020, 1, 1)))
    assert not (tmp_path / "out").exists()


def test_unknown_model_version_is_a_user_error(shared_world, scoring_settings, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nope"):
        score_day(scoring_settings(tmp_path), ScoreOptions(day=shared_world.score_dates[0],
                                                           model_version="nope"))


def test_a_second_run_of_the_same_date_is_refused(shared_world, scoring_settings, tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    settings = scoring_settings(tmp_path)
    with date_lock(tmp_path, day), pytest.raises(RunLockedError, match=rf"pid {os.getpid()}"):
        score_day(settings, ScoreOptions(day=day, in_process=True))
    assert not io.partition_dir(tmp_path, io.SCORES, day).exists()
    # once the holder is gone the date can be scored
    assert score_day(settings, ScoreOptions(day=day, in_process=True))["status"] == "succeeded"


def test_a_lock_held_by_a_killed_process_is_not_stale(shared_world, scoring_settings, tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, datetime, pathlib; from uba.locks import date_lock\n"
         "with date_lock(pathlib.Path(sys.argv[1]), datetime.date.fromisoformat(sys.argv[2])):\n"
         "    print('held', flush=True); time.sleep(60)", str(tmp_path), day.isoformat()],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid}"):
            score_day(scoring_settings(tmp_path), ScoreOptions(day=day, in_process=True))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(tmp_path, day).exists()
    manifest = score_day(scoring_settings(tmp_path), ScoreOptions(day=day, in_process=True))
    assert manifest["status"] == "succeeded"


def test_quarantined_rows_of_the_day_are_counted_beside_the_scored_ones(
        shared_world, tmp_path: Path) -> None:
    """received = input + quarantined: rows ingest rejected for D are reported, not lost."""
    from click.testing import CliRunner

    from jobs.cli import cli
    from uba.settings import load_settings

    day = shared_world.score_dates[0]
    data_dir = tmp_path / "data"
    for part in sorted((shared_world.data_dir / io.EVENTS).glob("event_date=*/*.parquet")):
        target = data_dir / part.relative_to(shared_world.data_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(part.read_bytes())
    raw = tmp_path / "late.csv"
    raw.write_text(
        "event_id,user_id,timestamp,event_type,session_duration_sec,events_in_session,device_type\n"
        f"late-1,new-user,{day}T12:00:00Z,login,60,3,desktop\n"
        f"late-2,new-user,{day}T12:05:00Z,teleport,60,3,desktop\n"
        f"late-3,new-user,{day}T12:06:00Z,view,-5,3,desktop\n")
    result = CliRunner().invoke(cli, ["ingest", str(raw), "--data-dir", str(data_dir)])
    assert result.exit_code == 2, result.output  # stored the valid row; 2 of 3 over ingest.max_quarantine_ratio
    settings = load_settings(overrides={"paths": {"data_dir": data_dir, "model_dir": shared_world.model_dir,
                                                  "output_dir": tmp_path / "out"}}, env={})
    manifest = score_day(settings, ScoreOptions(day=day, in_process=True))
    events = _events(data_dir, day)
    assert manifest["counts"]["quarantined_rows"] == 2
    assert manifest["row_conservation"] == {
        "input_rows": events.height, "scored_rows": events.height, "quarantined_rows": 2,
        "received_rows": events.height + 2, "ok": True}
    scores = _scores(tmp_path / "out", day)
    late = scores.filter(pl.col("event_id") == "late-1")
    assert late.height == 1 and late["known_user"].item() is False
    assert manifest["counts"]["unknown_user_rows"] >= 1


def test_a_day_whose_rows_were_all_quarantined_says_so(tmp_path: Path) -> None:
    """The operator is told the day was ingested but rejected, not to ingest it again."""
    from click.testing import CliRunner

    from jobs.cli import cli
    from uba.settings import load_settings

    raw = tmp_path / "bad.csv"
    raw.write_text(
        "event_id,user_id,timestamp,event_type,session_duration_sec,events_in_session,device_type\n"
        "b1,u1,2026-03-11T10:00:00Z,teleport,60,3,desktop\n"
        "b2,u1,2026-03-11T11:00:00Z,login,-5,3,desktop\n")
    data_dir = tmp_path / "data"
    assert CliRunner().invoke(cli, ["ingest", str(raw), "--data-dir", str(data_dir)]).exit_code == 2  # all quarantined
    settings = load_settings(overrides={"paths": {"data_dir": data_dir, "model_dir": tmp_path / "m",
                                                  "output_dir": tmp_path / "out"}}, env={})
    with pytest.raises(UserError, match=r"no events partition for 2026-03-11 .*all 2 ingested rows of that "
                                        r"day were quarantined"):
        score_day(settings, ScoreOptions(day=date(2026, 3, 11), in_process=True))
    assert not (tmp_path / "out").exists()


def test_a_rerun_without_user_day_alerts_drops_the_earlier_runs_alerts(shared_world, scoring_settings,
                                                                        tmp_path: Path) -> None:
    """Published outputs of D all come from one run: no stale flagged_users/ beside new scores."""
    day = shared_world.score_dates[0]
    first = score_day(scoring_settings(tmp_path), ScoreOptions(day=day, in_process=True))
    assert first["user_day"]["enabled"] is True
    assert io.partition_dir(tmp_path, io.FLAGGED_USERS, day).is_dir()
    score_day(scoring_settings(tmp_path, user_day={"enabled": False}), ScoreOptions(day=day, in_process=True))
    # the day's flagged_users/ now resolves to the second run's (empty) folder: it never vanishes
    assert io.partition_dir(tmp_path, io.FLAGGED_USERS, day).is_dir()
    assert io.partition_files(tmp_path, io.FLAGGED_USERS, day) == []
    assert _scores(tmp_path, day).height == _events(shared_world.data_dir, day).height


def test_a_corrupt_events_part_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """A truncated part (a copy cut short, a full disk elsewhere) must name itself, not crash."""
    uba_io = io
    day = date(2026, 3, 2)
    part = uba_io.partition_dir(tmp_path, uba_io.EVENTS, day) / "part-broken.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(UserError, match="part-broken.parquet is not a readable Parquet file"):
        uba_io.scan_events(tmp_path, day)
    foreign = part.with_name("part-foreign.parquet")
    part.unlink()
    pl.DataFrame({"event_id": ["e1"]}).write_parquet(foreign)
    with pytest.raises(UserError, match="part-foreign.parquet lacks columns"):
        uba_io.scan_events(tmp_path, day)


def _shard_inputs(settings, day: date):
    from uba.scoring.hooks import RunOperations
    from uba.scoring.shard import ShardInputs

    bundle = load_bundle(settings.paths.model_dir)
    ops = RunOperations.prepare(settings, bundle, day)
    baselines = baselines_as_of(settings.paths.data_dir, day, settings).collect()
    return bundle, ShardInputs(detector=bundle.detector, baselines=baselines, cuts=ops.cuts, rules=ops.rules,
                               drift_reference=ops.reference)


def test_a_shard_orphaned_by_a_killed_driver_cannot_recreate_its_staging(
        shared_world, scoring_settings, tmp_path: Path) -> None:
    """Staging is keyed by run id and created by the driver only: a task still running for a
    run whose driver died (its staging removed by the next run) fails instead of writing."""
    from uba.scoring.context import ShardContext
    from uba.scoring.plan import plan_shards
    from uba.scoring.shard import run_shard

    day = shared_world.score_dates[0]
    settings = scoring_settings(tmp_path / "out")
    bundle, inputs = _shard_inputs(settings, day)
    spec = plan_shards(io.partition_files(shared_world.data_dir, io.EVENTS, day), 10_000)[0]
    gone = tmp_path / "out" / ".staging" / f"event_date={day}" / "run-killed"
    ctx = ShardContext(run_key="killed", day=day, model_version=bundle.version, max_reasons=3, staging=str(gone))
    with pytest.raises(FileNotFoundError):
        run_shard(spec, ctx, inputs)
    assert not gone.exists()
    # with its staging in place the same shard writes exactly its own two parts
    for folder in ("scores", "flagged-parts"):
        (gone / folder).mkdir(parents=True)
    result = run_shard(spec, ctx, inputs)
    assert sorted(p.relative_to(gone).as_posix() for p in gone.rglob("*.parquet")) == [
        "flagged-parts/part-00000.parquet", "scores/part-00000.parquet"]
    assert result.rows == io.partition_row_count(shared_world.data_dir, io.EVENTS, day)


def test_tiny_shards_give_the_same_rows_and_flagged_bytes(shared_world, scoring_settings, day_output_bytes,
                                                          tmp_path: Path) -> None:
    """Shards of a few events each: polars 2.1 once panicked building sentences for the one
    or two flagged rows of such a shard."""
    day = shared_world.score_dates[0]  # the shared world's day with flagged rows (not every day has)
    whole = score_day(scoring_settings(tmp_path / "whole"), ScoreOptions(day=day, in_process=True))
    tiny = score_day(scoring_settings(tmp_path / "tiny", scoring={"chunk_rows": 50}),
                     ScoreOptions(day=day, in_process=True))
    assert tiny["execution"]["shards"] >= whole["counts"]["input_rows"] // 50
    assert tiny["counts"] == whole["counts"] and tiny["counts"]["flagged_rows"] > 0
    assert (day_output_bytes(tmp_path / "tiny", day)["flagged/part-00000.parquet"]
            == day_output_bytes(tmp_path / "whole", day)["flagged/part-00000.parquet"])
    a, b = _scores(tmp_path / "whole", day).sort("event_id"), _scores(tmp_path / "tiny", day).sort("event_id")
    assert a.equals(b)


def test_in_process_threads_publish_the_same_bytes_as_one_thread(shared_world, scoring_settings,
                                                                  day_output_bytes, tmp_path: Path) -> None:
    """In-process shards run side by side in threads; the parts must not depend on it."""
    day = shared_world.score_dates[0]
    rows = io.partition_row_count(shared_world.data_dir, io.EVENTS, day)
    small = {"chunk_rows": max(1, rows // 4)}
    one = score_day(scoring_settings(tmp_path / "one", scoring=small),
                    ScoreOptions(day=day, in_process=True, workers=1))
    two = score_day(scoring_settings(tmp_path / "two", scoring=small),
                    ScoreOptions(day=day, in_process=True, workers=2))
    assert one["execution"]["workers"] == 1
    assert two["execution"]["workers"] == min(2, len(os.sched_getaffinity(0)))
    assert two["execution"]["shards"] >= 4
    assert {r["pid"] for r in two["execution"]["shard_records"]} == {os.getpid()}
    assert day_output_bytes(tmp_path / "one", day) == day_output_bytes(tmp_path / "two", day)
    assert one["counts"] == two["counts"]


def _keyed(pairs: list[tuple[int | None, str | None]]) -> pl.DataFrame:
    """Rows in the scores' shape whose (timestamp, event_id) are ``pairs``, in that order."""
    stamps = [None if t is None else datetime(2026, 3, 9, tzinfo=UTC) + timedelta(seconds=t) for t, _ in pairs]
    frame = pl.DataFrame({"timestamp": stamps, "event_id": [e for _, e in pairs]},
                         schema={"timestamp": pl.Datetime("us", "UTC"), "event_id": pl.String})
    return frame.with_columns(pl.int_range(pl.len()).alias(c) for c in SCORE_COLUMNS if c not in frame.columns)


@pytest.mark.parametrize(("pairs", "ordered"), [
    ([], True),
    ([(1, "b")], True),
    ([(1, "b"), (2, "a"), (2, "b"), (3, "a")], True),  # ties on the time ordered by id
    ([(1, "b"), (2, "b"), (2, "a")], False),  # a tie's ids the wrong way round
    ([(2, "a"), (1, "b")], False),
    ([(1, "a"), (1, "a")], False),  # a repeated key: the sort may order it either way
    ([(1, "a"), (2, None)], False),
    ([(None, "a"), (1, "b")], False),
    ([(1, "a"), (2, "a"), (2, "a0"), (2, "b"), (10, "0")], True),  # ids compared as bytes
])
def test_rows_already_in_score_order_are_published_without_a_sort(pairs, ordered) -> None:
    """A shard skips the sort of its scores when its rows already stand in their order
    (ingest's parts do): only where each key is strictly after the one before, the order
    the sort would give; anything else (ties the wrong way, repeats, nulls) is sorted."""
    frame = _keyed(pairs)
    assert in_score_order(frame) is ordered
    if ordered:
        assert frame.select(SCORE_COLUMNS).equals(score_rows(frame.lazy()).collect())
    assert in_score_order(score_rows(frame.lazy()).collect()) is (len(set(pairs)) == len(pairs) and
                                                                 all(t is not None and e is not None for t, e in pairs))
