"""`uba-batch score` and `uba-batch backfill` as a scheduler or a person runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from uba import io
from uba.locks import date_lock
from uba.scoring.driver import ScoreOptions, score_day

UBA = Path(sys.executable).with_name("uba-batch")
REPO = Path(__file__).resolve().parents[1]


def _uba(*args: str, env: dict[str, str | None] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    for name in [k for k, v in full_env.items() if v is None]:  # None: leave the variable out
        full_env.pop(name)
    return subprocess.run([str(UBA), *args], capture_output=True, text=True, env=full_env, cwd=REPO,
                          timeout=timeout)


def _paths(shared_world, output_dir: Path) -> list[str]:
    return ["--data-dir", str(shared_world.data_dir), "--model-dir", str(shared_world.model_dir),
            "--output-dir", str(output_dir)]


def test_score_cli_end_to_end_on_an_embedded_local_ray(shared_world, scoring_settings, day_output_bytes,
                                                       tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    home = tmp_path / "home"  # a fresh machine: no ~/.ray/auth_token, no RAY_AUTH_MODE
    result = _uba("score", "--date", day.isoformat(), "--workers", "2", "--shards", "4",
                  *_paths(shared_world, tmp_path / "ray"),
                  env={"UBA_SCORING__CHUNK_ROWS": "100", "HOME": str(home), "RAY_AUTH_MODE": None,
                       "RAY_AUTH_TOKEN": None})
    assert result.returncode == 0, result.stderr
    assert "--shards is ignored" in result.stderr  # old scripts still run; the plan comes from the data
    # the job's own Ray runs with a token of its own: no warning, nothing written to the home folder
    assert "Token authentication" not in result.stderr and not (home / ".ray").exists()
    assert result.stdout.startswith(f"scored {day}: ")
    manifest = json.loads((tmp_path / "ray" / "runs" / f"event_date={day}" / "manifest.json").read_text())
    execution = manifest["execution"]
    assert execution["mode"] == "local" and execution["started_by_job"] is True
    rows = manifest["counts"]["input_rows"]
    assert execution["workers"] == 2 and execution["shards"] >= -(-rows // 100) >= 2
    assert execution["address"] is None
    assert manifest["row_conservation"]["ok"] is True
    reference = score_day(scoring_settings(tmp_path / "ref", scoring={"chunk_rows": 100}),
                          ScoreOptions(day=day, in_process=True))
    assert day_output_bytes(tmp_path / "ray", day) == day_output_bytes(tmp_path / "ref", day)
    assert manifest["counts"] == reference["counts"]


def test_missing_partition_is_one_line_without_traceback(shared_world, tmp_path: Path) -> None:
    result = _uba("score", "--date", "2020-01-01", *_paths(shared_world, tmp_path / "out"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "2020-01-01" in lines[0]
    assert not (tmp_path / "out").exists()


def test_the_default_date_is_yesterday_in_utc(shared_world, tmp_path: Path) -> None:
    before = datetime.now(UTC).date() - timedelta(days=1)
    result = _uba("score", *_paths(shared_world, tmp_path / "out"))
    after = datetime.now(UTC).date() - timedelta(days=1)
    assert result.returncode == 1
    assert f"no events partition for {before}" in result.stderr or f"no events partition for {after}" in result.stderr


def test_a_concurrent_run_is_refused_with_one_line(shared_world, tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    with date_lock(tmp_path, day):
        result = _uba("score", "--date", day.isoformat(), "--in-process", *_paths(shared_world, tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"another score run for {day} is in progress (pid {os.getpid()}" in result.stderr
    assert not io.partition_dir(tmp_path, io.SCORES, day).exists()


def _manifest(output_dir: Path, day: date) -> dict:
    return json.loads((output_dir / "runs" / f"event_date={day}" / "manifest.json").read_text())


def test_backfill_scores_in_order_skips_done_dates_and_forces(shared_world, tmp_path: Path) -> None:
    first, last = shared_world.score_dates[:2]  # two consecutive days: the counts below say 2
    args = ["backfill", "--start", first.isoformat(), "--end", last.isoformat(), "--in-process",
            *_paths(shared_world, tmp_path)]

    scored = _uba(*args)
    assert scored.returncode == 0, scored.stderr
    assert "backfill: 2 scored, 0 skipped, 0 failed of 2 dates" in scored.stdout
    assert f"[1/2] {first} scored" in scored.stderr and f"[2/2] {last} scored" in scored.stderr
    runs = {d: _manifest(tmp_path, d)["run_id"] for d in (first, last)}
    started = [_manifest(tmp_path, d)["started_at"] for d in (first, last)]
    assert started == sorted(started)

    skipped = _uba(*args)
    assert skipped.returncode == 0, skipped.stderr
    assert "backfill: 0 scored, 2 skipped, 0 failed of 2 dates" in skipped.stdout
    assert f"already scored with model {shared_world.version}" in skipped.stderr
    assert {d: _manifest(tmp_path, d)["run_id"] for d in (first, last)} == runs

    forced = _uba(*args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "backfill: 2 scored, 0 skipped, 0 failed of 2 dates" in forced.stdout
    assert all(_manifest(tmp_path, d)["run_id"] != runs[d] for d in (first, last))


def test_backfill_reports_a_failing_date_and_exits_non_zero(shared_world, tmp_path: Path) -> None:
    last = shared_world.score_dates[-1]
    missing = last + timedelta(days=1)
    result = _uba("backfill", "--start", last.isoformat(), "--end", missing.isoformat(), "--in-process",
                  *_paths(shared_world, tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "backfill: 1 scored, 0 skipped, 1 failed of 2 dates" in result.stdout
    assert f"error: failed dates: {missing}" in result.stderr
    assert _manifest(tmp_path, last)["status"] == "succeeded"


def test_backfill_rejects_an_inverted_range(shared_world, tmp_path: Path) -> None:
    result = _uba("backfill", "--start", "2026-03-10", "--end", "2026-03-09", *_paths(shared_world, tmp_path))
    assert result.returncode == 1 and "before start date" in result.stderr
    assert "Traceback" not in result.stderr


def test_backfill_shows_a_progress_bar_at_a_terminal(shared_world, tmp_path: Path) -> None:
    import pty

    first, last = shared_world.score_dates[:2]  # two consecutive days: the counts below say 2
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [str(UBA), "backfill", "--start", first.isoformat(), "--end", last.isoformat(), "--in-process",
         *_paths(shared_world, tmp_path)],
        stdout=subprocess.PIPE, stderr=terminal, text=True, env=env, cwd=REPO)
    os.close(terminal)
    seen = b""
    while True:
        try:
            block = os.read(controller, 4096)
        except OSError:  # the terminal side closed
            break
        if not block:
            break
        seen += block
    os.close(controller)
    stdout, _ = proc.communicate(timeout=120)
    screen = seen.decode(errors="replace")
    assert proc.returncode == 0, screen
    assert "backfill  [" in screen and "100%" in screen
    assert "[1/2]" not in screen  # log lines are for non-terminals
    assert "backfill: 2 scored, 0 skipped, 0 failed of 2 dates" in stdout


def test_by_default_a_day_below_the_ray_threshold_runs_in_process_threads(shared_world, day_output_bytes,
                                                                         tmp_path: Path) -> None:
    """The product's default (no address, a day below ray.min_rows_for_ray) scores in this
    process with one thread per worker, says why, and gives the same bytes as Ray."""
    from uba.settings import MIN_ROWS_FOR_RAY

    day = shared_world.score_dates[0]
    env = {k: v for k, v in os.environ.items() if k not in ("UBA_RAY__MIN_ROWS_FOR_RAY", "RAY_ADDRESS")}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", UBA_SCORING__CHUNK_ROWS="100")
    result = subprocess.run([str(UBA), "score", "--date", day.isoformat(), *_paths(shared_world, tmp_path / "d")],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    execution = json.loads((tmp_path / "d" / "runs" / f"event_date={day}" / "manifest.json").read_text())["execution"]
    assert execution["mode"] == "in-process" and f"ray.min_rows_for_ray={MIN_ROWS_FOR_RAY}" in execution["reason"]
    assert execution["workers"] == min(2, len(os.sched_getaffinity(0))) and execution["shards"] >= 2
    ray_run = _uba("score", "--date", day.isoformat(), *_paths(shared_world, tmp_path / "r"),
                   env={"UBA_SCORING__CHUNK_ROWS": "100", "UBA_RAY__MIN_ROWS_FOR_RAY": "0"})
    assert ray_run.returncode == 0, ray_run.stderr
    assert day_output_bytes(tmp_path / "d", day) == day_output_bytes(tmp_path / "r", day)


def test_a_day_inside_the_models_training_window_is_scored_with_a_warning_and_recorded(
        shared_world, tmp_path: Path) -> None:
    """After a retrain, re-scoring a day the new model was trained on (a backfill to clear
    stale entity risk, a re-run of a failed day) scored it in-sample: its alerts fell (29 to
    14 on a generated day) and nothing said why (found by an attack). Now the run warns,
    naming the model that scored the day before, the backfill repeats it under its summary,
    the manifest records the window and the verdict, and monitor lists the day."""
    from worlds import run_cli

    world = shared_world.copy(tmp_path / "world")
    first, second = world.score_dates[:2]
    paths = _paths(world, world.output_dir)
    unseen = _uba("score", "--date", first.isoformat(), "--in-process", *paths)
    assert unseen.returncode == 0, unseen.stderr
    assert "in-sample" not in unseen.stderr
    model = _manifest(world.output_dir, first)["model"]
    assert model["training_window"] == {"start": "2026-03-01", "end": "2026-03-08"}
    assert model["in_training_window"] is False

    run_cli("train", "--data-dir", str(world.data_dir), "--model-dir", str(world.model_dir),
            "--output-dir", str(world.output_dir), "--end-date", first.isoformat(), "--window-days", "9")
    walk = _uba("backfill", "--start", first.isoformat(), "--end", second.isoformat(), "--in-process", *paths)
    assert walk.returncode == 0, walk.stderr
    retrained = _manifest(world.output_dir, first)["model"]
    assert retrained["version"] != world.version
    assert retrained["training_window"] == {"start": "2026-03-01", "end": first.isoformat()}
    assert retrained["in_training_window"] is True
    assert _manifest(world.output_dir, second)["model"]["in_training_window"] is False
    assert (f"{first} lies inside the training window 2026-03-01..{first} of model {retrained['version']}: the "
            "model was fitted on this day's events, so they score lower and alert less than on a day it never saw "
            f"(in-sample); it is published as scored by model {world.version}; --model-version {world.version} "
            "scores it as that model did") in walk.stderr
    assert f"{second} lies inside" not in walk.stderr
    assert (f"warning: 1 date(s) lie inside the training window of model {retrained['version']} and were scored "
            "in-sample (the model saw their events: lower scores, fewer alerts than unseen days): "
            f"{first}") in walk.stderr

    monitor = _uba("monitor", "--start", first.isoformat(), "--end", second.isoformat(),
                   "--data-dir", str(world.data_dir), "--output-dir", str(world.output_dir))
    assert monitor.returncode == 0, monitor.stderr
    assert (f"scored in-sample on {first}: model {retrained['version']} was trained on that day, so its alerts "
            "are fewer than on an unseen day; re-score it with a model trained before it (--model-version)"
            ) in monitor.stdout
    assert f"scored in-sample on {second}" not in monitor.stdout
    assert f"scored by model: {first}..{second} {retrained['version']}" in monitor.stdout
    for day, shown in ((first, True), (second, False)):
        report = tmp_path / f"report-{day}.html"
        made = _uba("report", "--date", day.isoformat(), "--out", str(report), "--data-dir", str(world.data_dir),
                    "--output-dir", str(world.output_dir))
        assert made.returncode == 0, made.stderr
        assert ('<p id="in-sample"><b>Scored in-sample:</b> model ' in report.read_text()) is shown


def test_features_settings_changed_since_training_are_named_before_the_run_and_recorded(
        shared_world, tmp_path: Path) -> None:
    """`features.lookback_days` edited in the mounted config after training: the day's
    events got baselines of another window than the forest and its threshold were fitted
    on, and neither the run nor its manifest said so (found by an attack). The peer
    settings of a model trained without a directory change nothing, and are not named."""
    day = shared_world.score_dates[0]
    changed = _uba("score", "--date", day.isoformat(), "--in-process", *_paths(shared_world, tmp_path / "changed"),
                   env={"UBA_FEATURES__LOOKBACK_DAYS": "5", "UBA_FEATURES__MIN_HOUR_SPREAD": "2",
                        "UBA_FEATURES__PEER_MIN_USERS": "4"})
    assert changed.returncode == 0, changed.stderr
    assert (f"the features settings differ from those model {shared_world.version} was trained with "
            "(features.lookback_days 28 -> 5, features.min_hour_spread 1.0 -> 2.0): the events of "
            f"{day} get other features than the ones its forest and threshold were fitted on; retrain with these "
            "settings, or restore them") in changed.stderr
    model = _manifest(tmp_path / "changed", day)["model"]
    assert model["feature_settings_changed"] == {"lookback_days": [28, 5], "min_hour_spread": [1.0, 2.0]}
    same = _uba("score", "--date", day.isoformat(), "--in-process", *_paths(shared_world, tmp_path / "same"))
    assert same.returncode == 0, same.stderr
    assert "features settings differ" not in same.stderr
    assert "feature_settings_changed" not in _manifest(tmp_path / "same", day)["model"]


def test_events_ingested_after_their_day_was_scored_are_named_and_scored_by_the_next_backfill(
        shared_world, tmp_path: Path) -> None:
    """Late events (a collector's backlog) ingested into a day already scored were never
    scored: backfill skipped the day as done with that model, and neither it nor monitor
    said the published output missed them (found by an attack: two 500-action downloads
    stayed unscored). Now the run records the parts it read; monitor names the day, and
    backfill re-scores it, saying why; a day without late events is still skipped."""
    world = shared_world.copy(tmp_path / "world")
    day, other = world.score_dates[:2]
    paths = _paths(world, world.output_dir)
    walk = ["backfill", "--start", day.isoformat(), "--end", other.isoformat(), "--in-process", *paths]
    assert _uba(*walk).returncode == 0
    scored = _manifest(world.output_dir, day)["counts"]["input_rows"]
    late = tmp_path / "late.csv"
    late.write_text("event_id,user_id,timestamp,event_type,session_duration_sec,events_in_session,device_type\n"
                    f"late-1,u00003,{day}T03:00:00Z,download,60000,500,mobile\n"
                    f"late-2,u00003,{day}T03:01:00Z,download,60000,500,mobile\n")
    ingested = _uba("ingest", str(late), "--data-dir", str(world.data_dir))
    assert ingested.returncode == 0, ingested.stderr

    monitor = _uba("monitor", "--start", day.isoformat(), "--end", other.isoformat(),
                   "--data-dir", str(world.data_dir), "--output-dir", str(world.output_dir))
    assert monitor.returncode == 0, monitor.stderr
    assert (f"events of {day} not all scored: its events changed after it was scored ({scored:,} events scored, "
            f"{scored + 2:,} stored now); re-score it (uba-batch score --date {day}, or backfill)") in monitor.stdout
    assert f"events of {other}" not in monitor.stdout
    # the day after looks back on it: its baselines did not learn the late events
    assert (f"baselines of {other} out of date: the events of {day} in its baselines' lookback changed after it "
            f"was scored (late events its baselines did not learn); re-score in date order (uba-batch backfill "
            f"--start {other} --end {other})") in monitor.stdout
    assert f"baselines of {day}" not in monitor.stdout
    report = tmp_path / "report.html"
    assert _uba("report", "--date", day.isoformat(), "--out", str(report), "--data-dir", str(world.data_dir),
                "--output-dir", str(world.output_dir)).returncode == 0
    assert (f'<p id="late-events"><b>Not every event of this day is scored:</b> its events changed after it was '
            f"scored ({scored:,} events scored, {scored + 2:,} stored now); re-score it") in report.read_text()

    # the day after alone (its own events unchanged): re-scored for its lookback
    after = _uba("backfill", "--start", other.isoformat(), "--end", other.isoformat(), "--in-process", *paths)
    assert after.returncode == 0, after.stderr
    assert (f"(re-scored: the events of {day} in its baselines' lookback changed after it was scored (late events "
            "its baselines did not learn))") in after.stderr
    lookback = _manifest(world.output_dir, other)["inputs"]["lookback_events"]
    assert len(lookback) == 28 and lookback[day.isoformat()] == io.partition_fingerprint(world.data_dir, io.EVENTS, day)

    again = _uba(*walk)
    assert again.returncode == 0, again.stderr
    assert (f"(re-scored: its events changed after it was scored ({scored:,} events scored, {scored + 2:,} "
            "stored now))") in again.stderr
    assert _manifest(world.output_dir, day)["counts"]["scored_rows"] == scored + 2
    third = _uba(*walk)
    assert third.returncode == 0 and "backfill: 0 scored, 2 skipped" in third.stdout + third.stderr, third.stderr
    ids = set(pl.read_parquet(world.output_dir / "scores" / f"event_date={day}")["event_id"])
    assert {"late-1", "late-2"} <= ids
    done = _uba(*walk)
    assert "backfill: 0 scored, 2 skipped, 0 failed of 2 dates" in done.stdout, done.stderr
    assert _uba("report", "--date", day.isoformat(), "--out", str(report), "--data-dir", str(world.data_dir),
                "--output-dir", str(world.output_dir)).returncode == 0
    assert 'id="late-events"' not in report.read_text()


def test_an_analysts_table_that_cannot_be_read_fails_the_run_instead_of_being_empty(
        shared_world, tmp_path: Path) -> None:
    """The suppression rules, verdicts and triage are folders of parts; one the job could not
    list (owned by another user, a link to a volume not mounted, a file in its place) was
    read as empty: a night's run dropped every suppression rule, and 13 suppressed alerts
    came back as alerts (found by an attack, as a non-root job on a folder made by root).
    Now the run stops with one line naming the table, nothing published."""
    world = shared_world.copy(tmp_path / "world")
    day = world.score_dates[0]
    added = _uba("suppress", "add", "--user", "*", "--reason-kind", "*", "--data-dir", str(world.data_dir))
    assert added.returncode == 0, added.stderr
    rules = world.data_dir / "suppressions"
    rules.rename(tmp_path / "rules-elsewhere")
    rules.symlink_to(tmp_path / "unmounted" / "suppressions")
    args = ["score", "--date", day.isoformat(), "--in-process", *_paths(world, world.output_dir)]
    refused = _uba(*args)
    assert refused.returncode == 1, refused.stderr
    assert f"error: the suppressions table {rules} cannot be read (No such file or directory): its records " \
           "(analysts' decisions) would be missed; fix its permissions, or restore the folder, and run again" \
           in refused.stderr.splitlines()
    assert "Traceback" not in refused.stderr
    assert not io.partition_dir(world.output_dir, io.SCORES, day).exists()
    rules.unlink()
    (world.data_dir / "feedback").write_text("a file where the verdicts' folder belongs")
    refused = _uba(*args)
    assert refused.returncode == 1 and "error: the feedback table" in refused.stderr, refused.stderr
    (world.data_dir / "feedback").unlink()
    (tmp_path / "rules-elsewhere").rename(rules)
    scored = _uba(*args)
    assert scored.returncode == 0, scored.stderr
    counts = _manifest(world.output_dir, day)["alerts"]
    assert counts["suppressed_rows"] > 0 and counts["suppressed_rows"] == _manifest(
        world.output_dir, day)["counts"]["flagged_rows"]


def test_a_day_of_the_training_window_without_events_then_is_not_called_in_sample(
        shared_world, tmp_path: Path) -> None:
    """A window with a gap (a day whose logs had not arrived when the model was trained):
    the forest never saw that day, so scoring it once its events are in is out of sample;
    the bundle now lists the days it saw, and only those are called in-sample."""
    from worlds import run_cli

    world = shared_world.copy(tmp_path / "world")
    gap, seen = date(2026, 3, 5), date(2026, 3, 6)
    folder = io.partition_dir(world.data_dir, io.EVENTS, gap)
    folder.rename(tmp_path / "late-logs")
    run_cli("train", "--data-dir", str(world.data_dir), "--model-dir", str(world.model_dir),
            "--output-dir", str(world.output_dir), "--end-date", "2026-03-08", "--window-days", "8")
    (tmp_path / "late-logs").rename(folder)
    paths = _paths(world, world.output_dir)
    late = _uba("score", "--date", gap.isoformat(), "--in-process", *paths)
    assert late.returncode == 0, late.stderr
    assert "in-sample" not in late.stderr
    assert _manifest(world.output_dir, gap)["model"]["in_training_window"] is False
    known = _uba("score", "--date", seen.isoformat(), "--in-process", *paths)
    assert known.returncode == 0 and f"{seen} lies inside the training window" in known.stderr, known.stderr
    assert _manifest(world.output_dir, seen)["model"]["in_training_window"] is True
