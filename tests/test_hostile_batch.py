"""Replay of the hostile corpus of the batch job (tests/hostile/batch/, hardening).

Every case is a ``<case>.recipe.json`` (what to do to a fresh copy of the trained data
set and output directory before running ``uba-batch score --date 2026-03-09``) and a
``<case>.expect.json`` stating the verdict. Recipe keys:

* ``score_first``: score the day once first (the "old" output a failed run must keep);
* ``layout: "legacy"``: rewrite that output as the layout before versions left it (real
  folders and manifest file);
* ``layout: "absolute"``: rewrite it as the versioned layout with absolute links left it;
* ``layout: "foreign"``: scores and flagged of the day made by hand as symlinks into
  ``out/archive/v1/`` (copies of the day's files): links the product did not make;
* ``layout: "version_of_next_day"``: the day's ``.version`` names the next day's version;
  ``"version_folder_linked_to_next_day"``: it names a symlink among the day's versions that
  points at the next day's version; ``"anchor_linked_to_next_day"``: the published
  version's ``.anchor`` is a symlink to the next day's (``score_next_day`` scores that day);
* ``command``: ``report`` or ``backfill`` runs that reader of the day instead of score;
* ``damage``: a list of ``{"dataset": "events"|"aggregates", "day", "how"}`` with ``how``
  one of ``flip`` (one byte XOR 1 at ``at`` (fraction of the size) or ``at_byte``
  (negative = from the end)), ``truncate`` (to ``at`` of the size), ``garbage``,
  ``delete`` (the partition), ``drop_record`` (make the partition one written before
  checksums and manifests: no manifest, no record, listed as such in the data
  directory's marker), ``legacy_record`` (written before manifests, with per-part
  records), ``record_garbage`` (the partition's checksum manifest is not JSON),
  ``drop_manifest``, ``link_to_nothing`` (the partition folder replaced by a link to a path
  that does not exist: a volume not mounted), ``copy_from`` (the parts and manifest of ``source_day`` copied over
  the day's), ``extra_part`` (a copy of the part under another name),
  ``delete_part`` (the part file only), ``drop_all_checksums`` (``.checksums/`` and the
  marker deleted: nothing left to verify against), ``dead_writer_tmp`` (the 0-byte ``.tmp-*.parquet``
  a ``kill -9`` mid-ingest leaves in the partition), ``fifo_part`` (a FIFO named
  ``part-fifo.parquet`` next to the part); or ``{"how": "drop_marker"}`` (the data
  directory's ``.part-manifests.json``);
* ``move_output``: ``mv out moved`` before the run, which then writes to ``moved``;
* ``env``: environment of the run (fault hooks: ``UBA_FAULT_ENOSPC_AT``);
* ``kill_at``: run the installed ``uba-batch`` as a subprocess that SIGKILLs itself after
  that publish step (``UBA_FAULT_KILL_AT_PUBLISH_STEP``);
* ``copy_scores``: ``cp -r out/scores`` before the run (the contract check's scenario);
* ``date``: score that date instead (the events of 2026-03-09 are first written there,
  at the same times of day): the calendar edges.

Every case, whatever its verdict: no traceback; the expected exit code; a failure is one
``error:`` line naming what stopped it, with a failure record (``failure_record: false``:
refused before the run took the date's lock, as a missing partition is); nothing lost or forged:
the day is exactly the old output (``published: old``), nothing (``none``), or a new
output whose manifest's sha256s match the visible files and whose scored rows are
exactly the day's events (``new``). ``then_rerun``: a run without the fault then
succeeds and leaves no orphaned version; ``rebuilt``: those days' aggregates verify again;
``old_readable``: the old output reads completely before the run (e.g. once moved);
``relative_links``: afterwards every link of the day is relative. ``warning``: one stderr
line holds this text; ``unverified``: these partitions are in the new manifest's
``inputs.unverified_partitions``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from test_crash_recovery import _assert_relative_layout, _hand_made_links, _to_absolute_links_layout

from jobs.cli import cli
from uba import io

CORPUS = Path(__file__).parent / "hostile" / "batch"
REPO = Path(__file__).resolve().parents[1]
UBA = Path(sys.executable).with_name("uba-batch")
DAY = date(2026, 3, 9)


def case_names() -> list[str]:
    return sorted(p.name.removesuffix(".expect.json") for p in CORPUS.glob("*.expect.json"))


def _part(data: Path, dataset: str, day: str) -> Path:
    (part,) = io.partition_files(data, dataset, day)
    return part


def part_manifest_path(root: Path, dataset: str, day: date | str) -> Path:
    """Where the manifest of one events or aggregates partition lives (as the io writers put it)."""
    return io.checksum_folder(io.partition_dir(root, dataset, day)) / io.PART_MANIFEST_NAME


def record_checksum(written: Path, part: Path) -> None:
    """Write the per-part record a data directory from before manifests holds for ``part``
    (the product only reads this format now; the tests make such directories)."""
    record = {"format": 1, "sha256": io.file_sha256(written), "size": written.stat().st_size}
    io.write_json_atomic(record, io.checksum_path(part))


def to_legacy_partition(data: Path, dataset: str, day: str, records: bool) -> None:
    """Make one partition look written before manifests (with per-part records or none)."""
    part_manifest_path(data, dataset, day).unlink()
    marker = json.loads(io.part_manifests_marker(data).read_text())
    marker["legacy"].setdefault(dataset, []).append(day)
    io.part_manifests_marker(data).write_text(json.dumps(marker))
    for part in io.partition_dir(data, dataset, day).glob("*.parquet"):
        if records:
            record_checksum(part, part)
        else:
            io.checksum_path(part).unlink(missing_ok=True)


def damage(data: Path, spec: dict[str, Any]) -> None:
    how = spec["how"]
    if how == "drop_marker":
        io.part_manifests_marker(data).unlink()
        return
    if how == "drop_all_checksums":
        shutil.rmtree(data / io.CHECKSUMS)
        io.part_manifests_marker(data).unlink()
        return
    dataset, day = spec["dataset"], spec["day"]
    if how == "delete":
        shutil.rmtree(io.partition_dir(data, dataset, day))
        return
    if how == "link_to_nothing":  # the partition on a volume that is not mounted: a link to nothing
        folder = io.partition_dir(data, dataset, day)
        shutil.rmtree(folder)
        folder.symlink_to(data.parent / "unmounted" / folder.name)
        return
    if how in ("drop_record", "legacy_record"):
        to_legacy_partition(data, dataset, day, records=how == "legacy_record")
        return
    if how == "drop_manifest":
        part_manifest_path(data, dataset, day).unlink()
        return
    if how == "record_garbage":
        part_manifest_path(data, dataset, day).write_text("{not json")
        return
    if how == "copy_from":  # another day's parts and manifest copied into this day's folders
        folder = io.partition_dir(data, dataset, day)
        for stale in folder.glob("*.parquet"):
            stale.unlink()
        for source in io.partition_dir(data, dataset, spec["source_day"]).glob("*.parquet"):
            shutil.copy2(source, folder / source.name)
        shutil.copyfile(part_manifest_path(data, dataset, spec["source_day"]),
                        part_manifest_path(data, dataset, day))
        return
    part = _part(data, dataset, day)
    if how == "extra_part":
        shutil.copyfile(part, part.with_name("part-extra.parquet"))
        return
    if how == "delete_part":
        part.unlink()
        return
    if how == "dead_writer_tmp":
        (part.parent / ".tmp-0123456789abcdef.parquet").write_bytes(b"")
        return
    if how == "fifo_part":  # a FIFO named like a part: opening it waits for a writer
        os.mkfifo(part.with_name("part-fifo.parquet"))
        return
    body = bytearray(part.read_bytes())
    if how == "flip":
        at = spec["at_byte"] if "at_byte" in spec else int(len(body) * spec["at"])
        body[at] ^= 0x01
    elif how == "truncate":
        body = body[: int(len(body) * spec["at"])]
    elif how == "garbage":
        body = bytearray(b"this is not parquet\n" * 40)
    else:
        raise ValueError(how)
    part.write_bytes(bytes(body))


def to_legacy_layout(out: Path, day: date) -> None:
    links = [io.partition_dir(out, dataset, day) for dataset in io.DAY_DATASETS]
    contents = [{p.name: p.read_bytes() for p in link.glob("*.parquet")} for link in links]
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


def day_state(out: Path, day: date) -> tuple[dict[str, dict[str, str]], dict[str, Any] | None]:
    files = {dataset: {p.name: io.file_sha256(p) for p in io.partition_files(out, dataset, day)}
             for dataset in io.DAY_DATASETS}
    path = io.run_manifest_path(out, day)
    return files, (json.loads(path.read_text()) if path.is_file() else None)


def failure_records(out: Path, day: date) -> int:
    return len(list(io.partition_dir(out, io.RUNS, day).glob("failed-*.json")))


def score_args(data: Path, model_dir: Path, out: Path, day: date = DAY) -> list[str]:
    return ["score", "--date", day.isoformat(), "--in-process", "--data-dir", str(data),
            "--model-dir", str(model_dir), "--output-dir", str(out)]


def command_args(recipe: dict[str, Any], data: Path, model_dir: Path, out: Path, day: date) -> list[str]:
    """The command a case runs on the damaged day: score by default, or a reader of the day."""
    command = recipe.get("command", "score")
    if command == "report":
        return ["report", "--date", day.isoformat(), "--output-dir", str(out)]
    if command == "backfill":
        return ["backfill", "--start", day.isoformat(), "--end", day.isoformat(), "--in-process",
                "--data-dir", str(data), "--model-dir", str(model_dir), "--output-dir", str(out)]
    return score_args(data, model_dir, out, day)


def point_version_at_next_day(out: Path, day: date) -> Path:
    """The day's ``.version`` link rewritten by hand to name the next day's published
    version: a well-formed link to a real version, of the wrong day."""
    nxt = day + timedelta(days=1)
    link = io.partition_dir(out, io.SCORES, day) / io.VERSION_LINK
    other = io.published_version(out, nxt)
    link.unlink()
    link.symlink_to(f"../../{io.DAYS}/event_date={nxt.isoformat()}/{other}/.anchor")
    return link


def link_version_folder_to_next_day(out: Path, day: date) -> None:
    """A symlink among the day's versions naming the next day's published version, and the
    day's ``.version`` naming that symlink: every link text has the form publish writes."""
    nxt = day + timedelta(days=1)
    other = io.published_version(out, nxt)
    (io.day_versions_dir(out, day) / "linked").symlink_to(f"../event_date={nxt.isoformat()}/{other}")
    link = io.partition_dir(out, io.SCORES, day) / io.VERSION_LINK
    link.unlink()
    link.symlink_to(f"../../{io.DAYS}/event_date={day.isoformat()}/linked/{io.ANCHOR_DIR}")


def link_anchor_to_next_day(out: Path, day: date) -> None:
    """The ``.anchor`` of the day's published version replaced by a symlink to the next
    day's: the day's links (``.version/../flagged``, the manifest) then resolve there."""
    nxt = day + timedelta(days=1)
    anchor = io.day_versions_dir(out, day) / io.published_version(out, day) / io.ANCHOR_DIR
    anchor.rmdir()
    anchor.symlink_to(f"../../event_date={nxt.isoformat()}/{io.published_version(out, nxt)}/{io.ANCHOR_DIR}")


def run_cli(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str, BaseException | None]:
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=True)
    exception = None if isinstance(result.exception, SystemExit) else result.exception
    return result.exit_code, result.stdout, result.stderr, exception


def run_killed(args: list[str], step: str) -> tuple[int, str, str, None]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "UBA_FAULT_KILL_AT_PUBLISH_STEP": step}
    done = subprocess.run([str(UBA), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr, None


def assert_new_day(data: Path, out: Path, day: date, old_manifest: dict[str, Any] | None) -> dict[str, Any]:
    """A complete new output: the manifest describes exactly the visible files, and the
    scored rows are exactly the day's stored events (nothing lost, nothing forged)."""
    files, manifest = day_state(out, day)
    assert manifest is not None and manifest["status"] == "succeeded" and manifest["row_conservation"]["ok"]
    assert old_manifest is None or manifest["run_id"] != old_manifest["run_id"]
    for dataset in (io.SCORES, io.FLAGGED):
        recorded = {name: f["sha256"] for name, f in manifest["outputs"][dataset]["files"].items()}
        assert recorded == files[dataset]
    key = ["event_id", "user_id", "timestamp"]
    scored = pl.read_parquet(io.partition_files(out, io.SCORES, day)).select(key).sort("event_id")
    stored = pl.read_parquet(io.partition_files(data, io.EVENTS, day)).select(key).sort("event_id")
    assert scored.equals(stored)
    return manifest


# How a recipe's "layout" rewrites the day's outputs after the first run.
LAYOUTS: dict[str, Any] = {
    "legacy": to_legacy_layout,
    "absolute": _to_absolute_links_layout,
    "foreign": _hand_made_links,
    "version_of_next_day": point_version_at_next_day,
    "version_folder_linked_to_next_day": link_version_folder_to_next_day,
    "anchor_linked_to_next_day": link_anchor_to_next_day,
}


# What each case attacks ("kind" in its .expect.json).
KINDS = {
    "publishing": "a published day's versions and links, hand-edited or cut short by SIGKILL",
    "damaged_inputs": "events and aggregates partitions corrupted, truncated, swapped or stripped of checksums",
    "disk_full": "ENOSPC at each write of a run",
}


def test_the_corpus_covers_every_kind() -> None:
    names = case_names()
    kinds = {json.loads((CORPUS / f"{n}.expect.json").read_text())["kind"] for n in names}
    assert kinds == set(KINDS) and len(names) >= 20
    for name in names:
        assert (CORPUS / f"{name}.recipe.json").is_file(), name
    assert sum(p.stat().st_size for p in CORPUS.iterdir()) < 100_000


@pytest.mark.parametrize("name", case_names())
def test_hostile_batch_case(name: str, shared_world, tmp_path: Path) -> None:
    expect = json.loads((CORPUS / f"{name}.expect.json").read_text())
    recipe = json.loads((CORPUS / f"{name}.recipe.json").read_text())
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(shared_world.data_dir, data, symlinks=True)
    day = date.fromisoformat(recipe.get("date", DAY.isoformat()))
    if day != DAY:  # the day's events, moved to that date (same times of day)
        events = pl.read_parquet(io.partition_files(data, io.EVENTS, DAY))
        io.write_part(events.with_columns(pl.col("timestamp") - (DAY - day)), data, io.EVENTS, day, name="part-moved")
    args = score_args(data, shared_world.model_dir, out, day)
    if recipe.get("score_first"):
        assert run_cli(args)[0] == 0
    if recipe.get("score_next_day"):
        assert run_cli(score_args(data, shared_world.model_dir, out, day + timedelta(days=1)))[0] == 0
    if "layout" in recipe:
        LAYOUTS[recipe["layout"]](out, day)
    for spec in recipe.get("damage", []):
        damage(data, spec)
    if recipe.get("move_output"):
        os.rename(out, tmp_path / "moved")
        out = tmp_path / "moved"
        args = score_args(data, shared_world.model_dir, out, day)
    old_files, old_manifest = day_state(out, day)
    if expect.get("old_readable"):
        assert old_manifest is not None and old_manifest["status"] == "succeeded"
        assert all(old_files[dataset] for dataset in (io.SCORES, io.FLAGGED)), old_files
        for dataset in (io.SCORES, io.FLAGGED):
            assert pl.scan_parquet(out / dataset, hive_partitioning=True).collect().height > 0
    records_before = failure_records(out, day)
    if recipe.get("copy_scores"):
        subprocess.run(["cp", "-r", str(out / io.SCORES), str(tmp_path / "first")], check=True)

    args = command_args(recipe, data, shared_world.model_dir, out, day)
    if recipe.get("kill_at"):
        code, stdout, stderr, exception = run_killed(args, recipe["kill_at"])
    else:
        code, stdout, stderr, exception = run_cli(args, env=recipe.get("env"))

    assert exception is None, repr(exception)
    assert "Traceback" not in stdout + stderr, (stdout + stderr)[-3000:]
    assert code == expect["exit_code"], (stdout + stderr)[-3000:]
    if code == 1:
        lines = stderr.strip().splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        assert errors == lines[-1:] and expect.get("error_line", expect["error"]) in errors[0], stderr[-3000:]
        assert expect["error"] in stderr, stderr[-3000:]
        # a part whose footer does not read is refused before the run starts (no record)
        assert failure_records(out, day) == records_before + int(expect.get("failure_record", True))
    if expect["published"] == "old":
        assert day_state(out, day) == (old_files, old_manifest)
    elif expect["published"] == "none":
        assert day_state(out, day) == ({dataset: {} for dataset in io.DAY_DATASETS}, None)
    else:
        assert_new_day(data, out, day, old_manifest)
    for day in expect.get("rebuilt", []):
        assert io.verify_part(_part(data, io.AGGREGATES, day))
    if expect.get("copy_is_first_run"):
        copied = tmp_path / "first" / f"event_date={day.isoformat()}"
        assert {p.name: io.file_sha256(p) for p in copied.glob("*.parquet")} == old_files[io.SCORES]
    if expect.get("then_rerun"):
        assert run_cli(args)[0] == 0
        manifest = assert_new_day(data, out, day, None)
        versions = [p.name for p in io.day_versions_dir(out, day).iterdir()]
        assert manifest["run_id"] in versions and len(versions) <= 2
        assert not any((out / ".staging").rglob("*.parquet"))
    if "warning" in expect:
        assert sum(expect["warning"] in line for line in stderr.splitlines()) == 1, stderr[-3000:]
    if "unverified" in expect:
        inputs = json.loads(io.run_manifest_path(out, day).read_text())["inputs"]
        assert set(expect["unverified"]) <= set(inputs["unverified_partitions"]), inputs
    if expect.get("relative_links"):
        _assert_relative_layout(out, day)
    if code == -signal.SIGKILL:
        assert expect["exit_code"] == -9


@pytest.mark.parametrize(("section", "named"), [
    ({"model": "v1"}, "'model' is str"),
    ({"risk": ["high"]}, "'risk' is list"),
    ({"risk": {"cuts": {"medium": 40, "high": "70", "critical": 90}}}, "risk.cuts"),
    ({"risk_stale": "yes"}, "'risk_stale' is str"),
])
def test_a_hand_edited_run_manifest_section_is_one_line_naming_it(tmp_path: Path, section: dict[str, Any],
                                                                  named: str) -> None:
    """The typed manifest reader trusts the driver's keys, but a section that readers step
    into and that an operator's edit turned into a string or list is refused by name (the
    export used to die with an AttributeError traceback after the readers were typed)."""
    out, day = tmp_path / "out", date(2026, 3, 20)
    manifest = {"event_date": day.isoformat(), "run_id": "r-1", "status": "succeeded", **section}
    io.write_json_atomic(manifest, io.run_manifest_path(out, day))
    code, _, err, exc = run_cli(["export", "--output-dir", str(out), "--date", day.isoformat(), "--what", "all"])
    assert exc is None and code == 1
    assert named in err and "Traceback" not in err


_OLDER_MODEL = {"version": "20260318T000000Z-abcdef12", "threshold": 0.6, "threshold_percentile": 98.0}


@pytest.mark.parametrize("sections", [
    {},  # a run manifest from before model, counts, alerts, drift, user-day and risk sections
    {"model": {"version": "v1"}},  # before the threshold was recorded
    {"model": {"version": "v1", "threshold": None, "threshold_percentile": None}},
    {"model": None, "counts": None, "alerts": None, "drift": None, "user_day": None, "risk": None,
     "delivery": None, "risk_stale": None},  # a null section is a missing one
    {"model": _OLDER_MODEL, "drift": {"status": "ok", "limits": None, "max_feature_psi": 0.1}},
    {"model": _OLDER_MODEL, "risk": {"cuts": {}}},  # no cuts, as before entity risk
])
def test_an_older_or_sparse_run_manifest_still_reports_and_monitors(tmp_path: Path,
                                                                   sections: dict[str, Any]) -> None:
    """The report and monitor read manifests of runs older than today's sections: a missing
    or null section (or threshold, or drift limits) shows as '-' or n/a, never a traceback
    (after the readers were typed, the report died with KeyError 'model' on such a day, and
    report and monitor with AttributeError on a null drift or user_day section)."""
    out, day = tmp_path / "out", date(2026, 3, 20)
    manifest = {"event_date": day.isoformat(), "run_id": "r-1", "status": "succeeded", **sections}
    io.write_json_atomic(manifest, io.run_manifest_path(out, day))
    common = ["--output-dir", str(out), "--data-dir", str(tmp_path / "data")]
    code, _, err, exc = run_cli(["report", "--date", day.isoformat(), "--out", str(tmp_path / "r.html"), *common])
    assert exc is None and code == 0, (exc, err)
    assert "threshold -" in (tmp_path / "r.html").read_text() or sections.get("model", {}) == _OLDER_MODEL
    code, stdout, err, exc = run_cli(["monitor", "--start", day.isoformat(), "--end", day.isoformat(),
                                      "--png", str(tmp_path / "m.png"), *common])
    assert exc is None and code == 0, (exc, err)
    assert day.isoformat() in stdout


def test_a_run_manifest_stale_entry_that_is_not_an_object_is_one_line_naming_it(tmp_path: Path) -> None:
    out, day = tmp_path / "out", date(2026, 3, 20)
    manifest = {"event_date": day.isoformat(), "run_id": "r-1", "status": "succeeded", "risk_stale": ["x"]}
    io.write_json_atomic(manifest, io.run_manifest_path(out, day))
    code, _, err, exc = run_cli(["monitor", "--start", day.isoformat(), "--end", day.isoformat(),
                                 "--output-dir", str(out), "--png", str(tmp_path / "m.png")])
    assert exc is None and code == 1, (exc, err)
    assert "'risk_stale' entry 0 is str" in err and "Traceback" not in err
