"""What a crash leaves behind: the job SIGKILLed mid-run, a Ray worker killed during
scoring, a swap interrupted between its two renames."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_until

from uba import io
from uba.scoring.context import FaultInjection
from uba.scoring.driver import STAGING_DIR, ScoreOptions, score_day
from uba.scoring.ray_backend import ShardFailedError

UBA = Path(sys.executable).with_name("uba-batch")
REPO = Path(__file__).resolve().parents[1]


def _published_state(output_dir: Path, day, day_output_bytes) -> tuple[dict[str, bytes], str]:
    manifest = io.partition_dir(output_dir, io.RUNS, day) / "manifest.json"
    return day_output_bytes(output_dir, day), manifest.read_text()


def test_sigkill_mid_run_keeps_the_previous_output_and_a_rerun_completes(
        shared_world, scoring_settings, day_output_bytes, tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    out = tmp_path / "out"
    score_day(scoring_settings(out), ScoreOptions(day=day, in_process=True))
    previous = _published_state(out, day, day_output_bytes)
    # The killed run and the re-run cut the day into several parts, so any mix of old and
    # new files in the published directory would show.
    rows = json.loads(previous[1])["counts"]["input_rows"]
    chunk_env = {"UBA_SCORING__CHUNK_ROWS": str(max(1, rows // 3))}
    paths = ["--data-dir", str(shared_world.data_dir), "--model-dir", str(shared_world.model_dir),
             "--output-dir", str(out)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           **chunk_env, "UBA_FAULT_PAUSE_BEFORE_PUBLISH_SEC": "120"}
    env.pop("RAY_ADDRESS", None)
    log = (tmp_path / "killed-job.log").open("w")
    job = subprocess.Popen([str(UBA), "score", "--date", day.isoformat(), *paths], env=env, cwd=REPO,
                           stdout=log, stderr=log, start_new_session=True)
    try:
        staged = wait_until(lambda: list((out / STAGING_DIR).glob("*/*/flagged/part-00000.parquet")),
                           120, "the killed run to finish staging")
        assert len(list(staged[0].parents[1].glob("scores/part-*.parquet"))) >= 3
        job.send_signal(signal.SIGKILL)
        assert job.wait(timeout=30) == -signal.SIGKILL
    finally:
        # the job's embedded Ray lives in its process group; end what the kill left running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        log.close()

    assert _published_state(out, day, day_output_bytes) == previous
    assert not list(io.partition_dir(out, io.RUNS, day).glob("failed-*.json"))
    assert (out / STAGING_DIR).exists()

    rerun = subprocess.run([str(UBA), "score", "--date", day.isoformat(), "--in-process", *paths],
                           env={**env, "UBA_FAULT_PAUSE_BEFORE_PUBLISH_SEC": ""}, cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    reference = tmp_path / "reference"
    score_day(scoring_settings(reference, scoring={"chunk_rows": max(1, rows // 3)}),
              ScoreOptions(day=day, in_process=True))
    assert day_output_bytes(out, day) == day_output_bytes(reference, day)
    assert not any((out / STAGING_DIR).rglob("*.parquet"))
    assert json.loads((io.partition_dir(out, io.RUNS, day) / "manifest.json").read_text())["status"] == "succeeded"


def _score_in_thread(settings, options: ScoreOptions) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["manifest"] = score_day(settings, options)
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def _half_day(data_dir: Path, day) -> int:
    """Shard size that splits the day into two shards."""
    rows = io.partition_row_count(data_dir, io.EVENTS, day)
    return max(1, (rows + 1) // 2)


def _kill_first_shard_worker(pid_dir: Path) -> tuple[str, int]:
    first = wait_until(lambda: sorted(pid_dir.glob("*.pid")), 60, "a shard to start")[0]
    label, pid = first.name.rsplit(".", 2)[0], int(first.read_text())
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    return label, pid


def test_a_killed_ray_worker_is_retried_and_the_output_is_correct(
        shared_world, ray_runtime, scoring_settings, day_output_bytes, tmp_path: Path) -> None:
    day = shared_world.score_dates[0]  # a day with flagged rows, so their bytes are compared too
    pid_dir = tmp_path / "pids"
    fault = FaultInjection(shard_delay_sec=1.5, pid_dir=str(pid_dir))
    halves = {"chunk_rows": _half_day(shared_world.data_dir, day)}
    thread, box = _score_in_thread(scoring_settings(tmp_path / "out", scoring=halves),
                                   ScoreOptions(day=day, workers=2, fault=fault))
    label, killed = _kill_first_shard_worker(pid_dir)
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert "error" not in box, box.get("error")
    attempts = [p.name for p in pid_dir.glob(f"{label}.*.pid")]
    assert len(attempts) >= 2 and f"{label}.{killed}.pid" in attempts  # the shard ran again elsewhere
    manifest = box["manifest"]
    assert manifest["status"] == "succeeded" and manifest["row_conservation"]["ok"]
    assert manifest["execution"]["shards"] == 2 and manifest["counts"]["flagged_rows"] > 0
    score_day(scoring_settings(tmp_path / "ref", scoring=halves), ScoreOptions(day=day, in_process=True))
    assert day_output_bytes(tmp_path / "out", day) == day_output_bytes(tmp_path / "ref", day)


def test_a_shard_that_keeps_failing_fails_the_run_cleanly(
        shared_world, ray_runtime, scoring_settings, day_output_bytes, tmp_path: Path) -> None:
    day = shared_world.score_dates[1]
    out = tmp_path / "out"
    score_day(scoring_settings(out), ScoreOptions(day=day, in_process=True))
    previous = _published_state(out, day, day_output_bytes)
    pid_dir = tmp_path / "pids"
    fault = FaultInjection(shard_delay_sec=1.5, pid_dir=str(pid_dir))
    halves = {"chunk_rows": _half_day(shared_world.data_dir, day)}
    thread, box = _score_in_thread(scoring_settings(out, ray={"max_retries": 0}, scoring=halves),
                                   ScoreOptions(day=day, workers=2, fault=fault))
    label, _ = _kill_first_shard_worker(pid_dir)
    thread.join(timeout=120)
    assert not thread.is_alive()
    error = box.get("error")
    assert isinstance(error, ShardFailedError), error
    message = str(error)
    assert "\n" not in message and "failed after 0 retries" in message
    assert _published_state(out, day, day_output_bytes) == previous
    failures = list(io.partition_dir(out, io.RUNS, day).glob("failed-*.json"))
    assert len(failures) == 1
    record = json.loads(failures[0].read_text())
    assert record["status"] == "failed" and record["published"] is False
    assert record["error"].startswith("ShardFailedError: scoring shard") and record["failed_stage"] == "shards"
    assert not any((out / STAGING_DIR).rglob("*.parquet"))


def test_an_interrupted_swap_is_undone_before_the_next_run(
        shared_world, scoring_settings, day_output_bytes, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Without RENAME_EXCHANGE a swap is two renames; a crash between them leaves the old
    day under an aside name. The next run puts it back before doing anything else."""
    day = shared_world.score_dates[0]
    out = tmp_path / "out"
    score_day(scoring_settings(out), ScoreOptions(day=day, in_process=True))
    previous = day_output_bytes(out, day)
    final = io.partition_dir(out, io.SCORES, day)
    aside = final.parent / f".tmp-old-{final.name}-0123abcd"
    os.replace(final, aside)  # the state such a crash leaves

    assert io.recover_replaced_dir(final) is True
    assert day_output_bytes(out, day) == previous and not aside.exists()

    os.replace(final, aside)
    logger = logging.getLogger("uba.scoring")
    logger.addHandler(caplog.handler)
    try:
        score_day(scoring_settings(out), ScoreOptions(day=day, in_process=True))
    finally:
        logger.removeHandler(caplog.handler)
    assert "restored the previous scores output" in caplog.text
    assert day_output_bytes(out, day) == previous and not aside.exists()


# --- hardening: a full disk in score is one line, and the previous output stays ---


def _cli_score(day, data_dir: Path, model_dir: Path, out: Path, env: dict[str, str] | None = None) -> Any:
    from click.testing import CliRunner

    from jobs.cli import cli

    return CliRunner().invoke(cli, ["score", "--date", day.isoformat(), "--data-dir", str(data_dir),
                                    "--model-dir", str(model_dir), "--output-dir", str(out), "--in-process"],
                              env=env, catch_exceptions=True)


def _assert_one_line_failure(result: Any, wanted: str) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.exit_code == 1, output[-3000:]
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()  # log lines of the run, then one error line
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and wanted in errors[0], result.stderr


@pytest.mark.parametrize("stage", ["staged_part", "aggregates", "baseline_snapshot"])
def test_disk_full_in_score_is_one_line_and_keeps_the_previous_output(
        shared_world, day_output_bytes, tmp_path: Path, stage: str) -> None:
    import shutil

    day = shared_world.score_dates[0]
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(shared_world.data_dir, data, symlinks=True)
    first = _cli_score(day, data, shared_world.model_dir, out)
    assert first.exit_code == 0, first.output
    previous = _published_state(out, day, day_output_bytes)
    if stage == "aggregates":  # make the run compute D's aggregates again
        shutil.rmtree(io.partition_dir(data, io.AGGREGATES, day))

    result = _cli_score(day, data, shared_world.model_dir, out, env={io.FAULT_ENOSPC_ENV: stage})

    _assert_one_line_failure(result, "No space left on device")
    assert _published_state(out, day, day_output_bytes) == previous
    (failure,) = io.partition_dir(out, io.RUNS, day).glob("failed-*.json")
    record = json.loads(failure.read_text())
    assert record["status"] == "failed" and record["published"] is False
    assert "No space left on device" in record["error"]
    assert not any((out / STAGING_DIR).rglob("*.parquet"))


def _mount_tmpfs(target: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                          capture_output=True).returncode == 0


def test_disk_full_on_a_real_small_tmpfs_in_score(shared_world, day_output_bytes, tmp_path: Path) -> None:
    """A real filesystem that fills: Polars 2.1 reports it as 'Invalid thrift: transport
    error' without the OS error; the run still ends with one line naming ENOSPC."""
    day = shared_world.score_dates[0]
    mount = tmp_path / "small"
    mount.mkdir()
    if not _mount_tmpfs(mount, "1m"):
        pytest.skip("needs root and tmpfs mounts")
    try:
        out = mount / "out"
        first = _cli_score(day, shared_world.data_dir, shared_world.model_dir, out)
        assert first.exit_code == 0, first.output
        previous = _published_state(out, day, day_output_bytes)
        info = os.statvfs(mount)  # fill the disk but for 16 KiB
        (mount / "filler").write_bytes(b"\0" * max(0, info.f_bavail * info.f_frsize - (16 << 10)))

        result = _cli_score(day, shared_world.data_dir, shared_world.model_dir, out)

        _assert_one_line_failure(result, "No space left on device")
        assert _published_state(out, day, day_output_bytes) == previous
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# --- hardening: a day changes as a whole, wherever publishing is killed ---

PUBLISH_STEPS_BY_LAYOUT = {
    # a day already in the versioned layout: its links exist, no link:* step runs
    "versioned": ("manifest", "links", "version", "commit", "prune"),
    # a day in the layout before versions (real folders): taken over link by link
    "legacy": ("manifest", "link:scores", "link:flagged", "link:flagged_users", "link:manifest", "links",
               "version", "commit", "prune"),
    # a day never published before
    "fresh": ("link:scores", "link:manifest", "version", "commit"),
    # a day published with absolute links (before they were relative): rewritten link by link
    "absolute": ("manifest", "link:scores", "link:flagged", "link:flagged_users", "link:manifest", "links",
                 "version", "commit", "prune"),
}
NEW_RUN = {"threshold": {"max_reasons": 1}, "user_day": {"enabled": False}}  # other bytes in every dataset


def _day_state(out: Path, day) -> tuple[dict[str, dict[str, str]], dict[str, Any] | None]:
    """What a reader sees of D: sha256 per file of every dataset, and the manifest."""
    state = {}
    for dataset in io.DAY_DATASETS:
        folder = io.partition_dir(out, dataset, day)
        state[dataset] = {p.name: io.file_sha256(p) for p in io.partition_files(out, dataset, day)} \
            if folder.is_dir() else {}
    path = io.run_manifest_path(out, day)
    return state, (json.loads(path.read_text()) if path.is_file() else None)


def _to_legacy_layout(out: Path, day) -> None:
    """Rewrite a published day as the layout before versions left it: real folders and file."""
    import shutil

    links = [io.partition_dir(out, dataset, day) for dataset in io.DAY_DATASETS]
    contents = [{p.name: p.read_bytes() for p in link.glob("*.parquet")} for link in links]  # all read through links first
    manifest = io.run_manifest_path(out, day)
    text = manifest.read_text()
    for link, files in zip(links, contents, strict=True):
        shutil.rmtree(link) if link.is_dir() and not link.is_symlink() else link.unlink()  # the anchor is a real folder
        link.mkdir()
        for name, body in files.items():
            (link / name).write_bytes(body)
    manifest.unlink()
    manifest.write_text(text)
    shutil.rmtree(out / io.DAYS)


def _to_absolute_links_layout(out: Path, day) -> None:
    """Rewrite a published day as the versioned layout with absolute links left it: the
    anchor a symlink to the version's scores, the other links through the anchor's
    ``..``, every text absolute (what dangles once the output directory is moved)."""
    import shutil

    version = io.published_version(out, day)
    assert version is not None
    folder = io.day_versions_dir(out, day) / version
    absolute = out.resolve()
    (folder / io.SCORES / io.VERSION_LINK).unlink()
    (folder / io.ANCHOR_DIR).rmdir()
    anchor = io.partition_dir(out, io.SCORES, day)
    shutil.rmtree(anchor)
    anchor.symlink_to(absolute / io.DAYS / f"event_date={day.isoformat()}" / version / io.SCORES)
    through = absolute / io.SCORES / f"event_date={day.isoformat()}"
    for dataset in io.DAY_DATASETS[1:]:
        link = io.partition_dir(out, dataset, day)
        link.unlink()
        link.symlink_to(f"{through}/../{dataset}")
    manifest = io.run_manifest_path(out, day)
    manifest.unlink()
    manifest.symlink_to(f"{through}/../manifest.json")


def _assert_relative_layout(out: Path, day) -> None:
    """D in the current layout: the anchor a real folder naming its version by a relative
    ``.version`` (a relative symlink where the filesystem lacks RENAME_EXCHANGE), every
    other dataset and the manifest a relative link through it."""
    anchor = io.partition_dir(out, io.SCORES, day)
    if anchor.is_symlink():
        assert not os.readlink(anchor).startswith("/")
    else:
        assert not os.readlink(anchor / io.VERSION_LINK).startswith("/")
    for link in [io.partition_dir(out, dataset, day) for dataset in io.DAY_DATASETS[1:]] + [
            io.run_manifest_path(out, day)]:
        assert link.is_symlink() and "/.version/../" in os.readlink(link), link
        assert not os.readlink(link).startswith("/")


@pytest.fixture(scope="module")
def publish_runs(shared_world, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The day published once by a plain run (each case copies it), and what the new run,
    which every case then kills and repeats, publishes: its state and its settings."""
    from uba.settings import load_settings

    root = tmp_path_factory.mktemp("publish-runs")
    day = shared_world.score_dates[0]

    def settings(out: Path, **sections: dict[str, Any]) -> Any:
        paths = {"data_dir": shared_world.data_dir, "model_dir": shared_world.model_dir, "output_dir": out}
        return load_settings(overrides={"paths": paths, **sections}, env={})

    score_day(settings(root / "old"), ScoreOptions(day=day, in_process=True))
    rows = io.partition_row_count(shared_world.data_dir, io.EVENTS, day)
    chunks = {"chunk_rows": max(1, rows // 3)}  # the new run also cuts the day into other parts
    score_day(settings(root / "ref", scoring=chunks, **NEW_RUN), ScoreOptions(day=day, in_process=True))
    new_state, _ = _day_state(root / "ref", day)
    return root / "old", new_state, chunks


@pytest.mark.parametrize(("layout", "step"), [(layout, step) for layout, steps in PUBLISH_STEPS_BY_LAYOUT.items()
                                              for step in steps])
def test_a_kill_at_any_publish_step_leaves_the_day_all_old_or_all_new_and_the_next_run_recovers(
        shared_world, scoring_settings, publish_runs, tmp_path: Path, layout: str, step: str) -> None:
    day = shared_world.score_dates[0]
    published, new_state, chunks = publish_runs
    out = tmp_path / "out"
    if layout != "fresh":
        shutil.copytree(published, out, symlinks=True)
    if layout == "legacy":
        _to_legacy_layout(out, day)
    if layout == "absolute":
        _to_absolute_links_layout(out, day)
    old_state, old_manifest = _day_state(out, day)
    assert new_state != old_state and len(new_state[io.SCORES]) >= 3

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "UBA_SCORING__CHUNK_ROWS": str(chunks["chunk_rows"]), "UBA_THRESHOLD__MAX_REASONS": "1",
           "UBA_USER_DAY__ENABLED": "false", "UBA_FAULT_KILL_AT_PUBLISH_STEP": step}
    killed = subprocess.run(
        [str(UBA), "score", "--date", day.isoformat(), "--in-process", "--data-dir", str(shared_world.data_dir),
         "--model-dir", str(shared_world.model_dir), "--output-dir", str(out)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    seen_state, seen_manifest = _day_state(out, day)
    committed = PUBLISH_STEPS_BY_LAYOUT[layout].index(step) >= PUBLISH_STEPS_BY_LAYOUT[layout].index("commit")
    if committed:
        assert seen_state == new_state and seen_manifest["status"] == "succeeded"
        for dataset in (io.SCORES, io.FLAGGED):  # the manifest describes exactly what is visible
            files = seen_manifest["outputs"][dataset]["files"]
            assert {name: f["sha256"] for name, f in files.items()} == seen_state[dataset]
    else:
        assert (seen_state, seen_manifest) == (old_state, old_manifest)

    recovered = score_day(scoring_settings(out, scoring=chunks, **NEW_RUN), ScoreOptions(day=day, in_process=True))
    assert _day_state(out, day) == (new_state, recovered)
    versions = sorted(p.name for p in (out / io.DAYS / f"event_date={day.isoformat()}").iterdir())
    assert recovered["run_id"] in versions and len(versions) == 2  # the published one and the one before
    assert not any((out / STAGING_DIR).rglob("*"))
    _assert_relative_layout(out, day)
    assert io.partition_dir(out, io.SCORES, day).is_dir() and not io.partition_dir(out, io.SCORES, day).is_symlink()


def test_a_copy_of_scores_keeps_the_first_runs_bytes(shared_world, scoring_settings, tmp_path: Path) -> None:
    """What the contract check's `cp -r out/scores first` relies on: the anchor is a real
    folder, so the copy holds the scores themselves, whatever later runs do."""
    day = shared_world.score_dates[0]
    out, copy = tmp_path / "out", tmp_path / "first"
    score_day(scoring_settings(out), ScoreOptions(day=day, in_process=True))
    subprocess.run(["cp", "-r", str(out / io.SCORES), str(copy)], check=True)
    first_files = {p.name: p.read_bytes() for p in (copy / f"event_date={day.isoformat()}").glob("*.parquet")}
    assert first_files
    score_day(scoring_settings(out, scoring={"chunk_rows": 100}), ScoreOptions(day=day, in_process=True))
    kept = {p.name: p.read_bytes() for p in (copy / f"event_date={day.isoformat()}").glob("*.parquet")}
    assert kept == first_files  # still the first run's bytes, not the second run's
    assert kept != {p.name: p.read_bytes() for p in io.partition_files(out, io.SCORES, day)}
    score_day(scoring_settings(out), ScoreOptions(day=day, in_process=True))
    assert {p.name: p.read_bytes() for p in (copy / f"event_date={day.isoformat()}").glob("*.parquet")} == first_files


# --- a scored output directory can be moved: every link is relative ---


def _read_everything(out: Path, day) -> dict[str, Any]:
    """What outside readers see of D under ``out``: Polars with Hive partitioning (folder
    and ``**`` glob), Python's glob, pyarrow, find, and the manifest through its link."""
    import glob

    import polars as pl
    import pyarrow.dataset as ds

    label = day.isoformat()
    seen: dict[str, Any] = {}
    for dataset in (io.SCORES, io.FLAGGED):
        by_folder = pl.scan_parquet(out / dataset, hive_partitioning=True).collect()
        by_glob = pl.read_parquet(f"{out}/{dataset}/**/*.parquet", hive_partitioning=True)
        assert by_folder.sort("event_id").equals(by_glob.sort("event_id"))
        assert by_folder["event_date"].cast(str).unique().to_list() == [label]
        assert ds.dataset(out / dataset, format="parquet", partitioning="hive").count_rows() == by_glob.height
        files = glob.glob(f"{out}/{dataset}/**/*.parquet", recursive=True)
        assert len(files) == len(io.partition_files(out, dataset, day)) >= 1
        seen[dataset] = by_glob.drop("event_date").sort("event_id")
    # the anchor is a real folder (unless a symlink, as without RENAME_EXCHANGE): plain find lists it
    plain = [] if io.partition_dir(out, io.SCORES, day).is_symlink() else ["-P"]
    found = subprocess.run(["find", *(plain or ["-L"]), str(out / io.SCORES), "-name", "*.parquet"],
                           capture_output=True, text=True)
    assert len(found.stdout.split()) == len(io.partition_files(out, io.SCORES, day))
    found = subprocess.run(["find", "-L", str(out / io.FLAGGED), "-name", "*.parquet"], capture_output=True,
                           text=True)
    assert len(found.stdout.split()) == len(io.partition_files(out, io.FLAGGED, day))
    seen["manifest"] = io.read_run_manifest(out, day)
    return seen


def test_a_moved_output_directory_reads_as_before_and_reruns(shared_world, scoring_settings,
                                                               tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    out, moved, copy = tmp_path / "out", tmp_path / "moved", tmp_path / "first"
    first = score_day(scoring_settings(out), ScoreOptions(day=day, in_process=True))
    before = _read_everything(out, day)
    os.rename(out, moved)  # `mv out moved`

    after = _read_everything(moved, day)
    assert after["manifest"] == first and before.keys() == after.keys()
    for key in (io.SCORES, io.FLAGGED):
        assert after[key].equals(before[key])
    assert io.published_version(moved, day) == first["run_id"]
    assert (moved / first["outputs"]["version"]).is_dir()  # recorded relative to the output directory

    # the contract check's scenario on the moved directory: copy, re-run, compare
    subprocess.run(["cp", "-r", str(moved / io.SCORES), str(copy)], check=True)
    rerun = score_day(scoring_settings(moved), ScoreOptions(day=day, in_process=True))
    import polars as pl

    a = pl.read_parquet(f"{copy}/**/*.parquet").sort("event_id")
    b = pl.read_parquet(f"{moved}/scores/**/*.parquet").sort("event_id")
    assert a.height == b.height == first["counts"]["scored_rows"] and a.equals(b)
    assert _read_everything(moved, day)["manifest"] == rerun
    _assert_relative_layout(moved, day)


def test_absolute_links_left_by_the_layout_before_are_read_and_made_relative_by_the_next_run(
        shared_world, scoring_settings, tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    out, moved = tmp_path / "out", tmp_path / "moved"
    first = score_day(scoring_settings(out), ScoreOptions(day=day, in_process=True))
    before = _read_everything(out, day)
    _to_absolute_links_layout(out, day)
    assert _read_everything(out, day)["manifest"] == first  # readers follow absolute links meanwhile
    assert io.published_version(out, day) == first["run_id"]
    os.rename(out, moved)
    assert io.read_run_manifest(moved, day) is None  # what broke: every absolute link dangles
    assert io.published_version(moved, day) == first["run_id"]  # read from the link text alone

    rerun = score_day(scoring_settings(moved), ScoreOptions(day=day, in_process=True))
    _assert_relative_layout(moved, day)
    after = _read_everything(moved, day)
    assert after["manifest"] == rerun and after[io.SCORES].equals(before[io.SCORES])
    assert sorted(p.name for p in io.day_versions_dir(moved, day).iterdir()) == sorted([first["run_id"],
                                                                                         rerun["run_id"]])


def test_without_rename_exchange_the_anchor_is_a_relative_symlink_renamed_over(
        shared_world, scoring_settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Filesystems without RENAME_EXCHANGE (NFS, macOS): the commit is the rename of a
    symlink, still one atomic step; a real anchor left by another filesystem is set aside
    once, and a cut between those two renames is undone by the next run."""
    day = shared_world.score_dates[0]
    out, moved = tmp_path / "out", tmp_path / "moved"
    real = score_day(scoring_settings(out), ScoreOptions(day=day, in_process=True))  # a real anchor
    monkeypatch.setattr(io, "_rename_exchange", lambda a, b: False)
    monkeypatch.setattr(io, "_CAN_EXCHANGE", {})
    anchor = io.partition_dir(out, io.SCORES, day)
    aside = out / io.DAYS / f".aside-event_date={day.isoformat()}-0123"
    os.rename(anchor, aside)  # the state a cut between the set-aside and the symlink leaves
    assert io.prune_day_versions(out, day) == [] and anchor.is_dir() and not aside.exists()
    assert io.read_run_manifest(out, day) == real

    second = score_day(scoring_settings(out), ScoreOptions(day=day, in_process=True))
    assert anchor.is_symlink() and os.readlink(anchor) == f"../.days/event_date={day.isoformat()}/{second['run_id']}/scores"
    third = score_day(scoring_settings(out, scoring={"chunk_rows": 100}), ScoreOptions(day=day, in_process=True))
    assert os.readlink(anchor).endswith(f"/{third['run_id']}/scores")
    _assert_relative_layout(out, day)
    before = _read_everything(out, day)
    os.rename(out, moved)
    after = _read_everything(moved, day)
    assert after["manifest"] == third and after[io.SCORES].equals(before[io.SCORES])


# --- links the product did not make are refused before anything of the day is touched ---


def _hand_made_links(out: Path, day, datasets: tuple[str, ...] = (io.SCORES, io.FLAGGED)) -> dict[str, str]:
    """The hand-made links attack: scores and flagged of D as symlinks into ``out/archive/v1``
    (real copies of the day's files), the rest of the day as the product left it."""
    import shutil

    archive = out / "archive" / "v1"
    for dataset in datasets:
        link = io.partition_dir(out, dataset, day)
        (archive / dataset).mkdir(parents=True)
        for part in io.partition_files(out, dataset, day):
            shutil.copyfile(part, archive / dataset / part.name)
        shutil.rmtree(link) if link.is_dir() and not link.is_symlink() else link.unlink()
        link.symlink_to(f"../archive/v1/{dataset}")
    return _link_texts(out, day)


def _link_texts(out: Path, day) -> dict[str, str]:
    links = [io.partition_dir(out, dataset, day) for dataset in io.DAY_DATASETS] + [io.run_manifest_path(out, day)]
    return {str(link): os.readlink(link) if link.is_symlink() else "real" for link in links}


def test_a_hand_made_anchor_link_out_of_the_versions_is_refused_and_nothing_is_touched(
        shared_world, tmp_path: Path) -> None:
    """Before: the run read the version name off any link (`../archive/v1/scores` -> "v1"),
    rewrote the anchor to a version that does not exist and failed at publish saying the
    day was intact while every link now dangled, and every later run failed the same way."""
    day = shared_world.score_dates[0]
    out = tmp_path / "out"
    assert _cli_score(day, shared_world.data_dir, shared_world.model_dir, out).exit_code == 0
    versions = sorted(p.name for p in io.day_versions_dir(out, day).iterdir())
    texts = _hand_made_links(out, day)
    seen = {dataset: sorted(p.name for p in io.partition_files(out, dataset, day)) for dataset in (io.SCORES, io.FLAGGED)}
    for _ in range(2):  # refused again, the same way: nothing was changed by the first refusal
        result = _cli_score(day, shared_world.data_dir, shared_world.model_dir, out)
        _assert_one_line_failure(result, f"{io.partition_dir(out, io.SCORES, day)} is a symlink to "
                                         "'../archive/v1/scores', not to a version under")
        assert "is intact" not in result.stderr and "were left as they are" in result.stderr
        assert _link_texts(out, day) == texts
        assert sorted(p.name for p in io.day_versions_dir(out, day).iterdir()) == versions
        assert {dataset: sorted(p.name for p in io.partition_files(out, dataset, day))
                for dataset in (io.SCORES, io.FLAGGED)} == seen
    assert io.published_version(out, day) is None  # "v1" is no version of the day


@pytest.mark.parametrize("entry", ["flagged", "version_link", "manifest", "anchor_file"])
def test_every_hand_made_entry_of_a_day_is_refused(shared_world, scoring_settings, entry: str,
                                                   tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    out = tmp_path / "out"
    score_day(scoring_settings(out), ScoreOptions(day=day, in_process=True))
    anchor = io.partition_dir(out, io.SCORES, day)
    if entry == "flagged":
        _hand_made_links(out, day, (io.FLAGGED,))
        wanted = f"{io.partition_dir(out, io.FLAGGED, day)} is a symlink to '../archive/v1/flagged'"
    elif entry == "version_link":
        (anchor / io.VERSION_LINK).unlink()
        (anchor / io.VERSION_LINK).symlink_to("../../archive/v1/.anchor")
        wanted = f"{anchor / io.VERSION_LINK} names '../../archive/v1/.anchor'"
    elif entry == "manifest":
        manifest = io.run_manifest_path(out, day)
        manifest.unlink()
        manifest.symlink_to("/etc/hostname")
        wanted = f"{manifest} is a symlink to '/etc/hostname'"
    else:
        import shutil

        shutil.rmtree(anchor)
        anchor.write_text("not a folder")
        wanted = f"{anchor} is not a folder"
    texts = _link_texts(out, day) if entry != "anchor_file" else None
    with pytest.raises(io.ForeignDayLayoutError, match="not made by uba-batch") as caught:
        score_day(scoring_settings(out), ScoreOptions(day=day, in_process=True))
    assert wanted in str(caught.value) and "\n" not in str(caught.value)
    if texts is not None:
        assert _link_texts(out, day) == texts


def test_the_layouts_the_product_made_pass_the_check(shared_world, scoring_settings, tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    out = tmp_path / "out"
    io.check_day_layout(out, day)  # never scored
    score_day(scoring_settings(out), ScoreOptions(day=day, in_process=True))
    io.check_day_layout(out, day)
    _to_absolute_links_layout(out, day)
    io.check_day_layout(out, day)
    assert io.published_version(out, day) is not None


def test_a_real_folder_where_the_version_link_belongs_is_named_as_such(tmp_path: Path) -> None:
    """Before: after ``cp -rL`` the refusal read ``.version names ''``."""
    link = io.partition_dir(tmp_path, io.SCORES, "2026-03-09") / io.VERSION_LINK
    link.mkdir(parents=True)
    with pytest.raises(io.ForeignDayLayoutError, match=rf"{link} is a real folder where the link to a version "
                                                        r"belongs \(a copy made with `cp -rL`"):
        io.check_day_layout(tmp_path, "2026-03-09")


def test_a_reader_refuses_a_version_link_naming_another_days_version(shared_world, scoring_settings,
                                                                      tmp_path: Path) -> None:
    """report read a day whose ``.version`` was pointed at the next day's version, and showed
    that day's figures under this day's date; readers now check the layout as score does."""
    first, second = shared_world.score_dates[:2]
    out = tmp_path / "out"
    for day in (first, second):
        score_day(scoring_settings(out), ScoreOptions(day=day, in_process=True))
    link = io.partition_dir(out, io.SCORES, first) / io.VERSION_LINK
    other = io.published_version(out, second)
    link.unlink()
    link.symlink_to(f"../../{io.DAYS}/event_date={second.isoformat()}/{other}/.anchor")
    with pytest.raises(io.ForeignDayLayoutError, match=str(link)):
        io.read_run_manifest(out, first)
    result = subprocess.run(
        [str(Path(sys.executable).with_name("uba-batch")), "report", "--date", first.isoformat(),
         "--output-dir", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert str(link) in result.stderr
    assert io.read_run_manifest(out, second)["event_date"] == second.isoformat()  # the other day still reads
