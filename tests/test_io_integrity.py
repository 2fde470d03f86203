"""Stored data is checked against the sha256 recorded when it was written (hardening).

Every events and aggregates partition has a manifest under ``<data-dir>/.checksums/``
listing each part with its sha256, written by the io writers with the parts. A part
whose bytes differ, a part the manifest does not list, a listed part that is gone, or a
deleted manifest fails a score run with one line naming the file (events), or gets the
partition rebuilt from its source (aggregates, derived data). Partitions written before
manifests (listed in ``<data-dir>/.part-manifests.json``) are read as before.
"""

from __future__ import annotations

import json
import shutil
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from test_hostile_batch import part_manifest_path, record_checksum, to_legacy_partition

from jobs.cli import cli
from uba import io


def _copy(shared_world, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(shared_world.data_dir, data, symlinks=True)
    return data


def _score(day: date, data: Path, model_dir: Path, out: Path) -> Any:
    return CliRunner().invoke(cli, ["score", "--date", day.isoformat(), "--data-dir", str(data),
                                    "--model-dir", str(model_dir), "--output-dir", str(out), "--in-process"],
                              catch_exceptions=True)


def _flip(path: Path, at: int) -> None:
    body = bytearray(path.read_bytes())
    body[at] ^= 0x01
    path.write_bytes(bytes(body))


def _one_error_line(result: Any) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output and result.exit_code == 1, output[-3000:]
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:], result.stderr
    return errors[0]


def test_writers_list_every_part_in_a_manifest_outside_the_hive_folders(tmp_path: Path) -> None:
    frame = pl.DataFrame({"a": [1, 2, 3]})
    part = io.write_part(frame, tmp_path, io.EVENTS, "2026-03-01", name="part-x")
    other = io.write_part(frame, tmp_path, io.EVENTS, "2026-03-01", name="part-y")
    path = part_manifest_path(tmp_path, io.EVENTS, "2026-03-01")
    assert path == tmp_path / ".checksums" / "events" / "event_date=2026-03-01" / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["parts"] == {p.name: {"sha256": io.file_sha256(p), "size": p.stat().st_size}
                                 for p in (part, other)}
    assert manifest["pending"] == {}
    assert json.loads(io.part_manifests_marker(tmp_path).read_text())["legacy"] == {"events": [], "aggregates": []}
    aggregates = io.write_aggregates(frame, tmp_path, date(2026, 3, 1), "t1")
    assert io.verify_part(aggregates) and io.verify_part(part)
    rebuilt = io.write_aggregates(frame, tmp_path, date(2026, 3, 1), "t2")  # a rebuilt day lists only the new part
    assert list(json.loads(part_manifest_path(tmp_path, io.AGGREGATES, "2026-03-01").read_text())["parts"]) == [
        rebuilt.name]
    # Hive readers never see the manifests: a directory scan refuses mixed extensions
    assert pl.scan_parquet(tmp_path / io.EVENTS, hive_partitioning=True).collect().height == 6
    io.write_part(frame, tmp_path, io.QUARANTINE, "2026-03-01")
    assert not (tmp_path / ".checksums" / io.QUARANTINE).exists()
    io.remove_part(other)
    assert list(json.loads(path.read_text())["parts"]) == [part.name]
    assert io.partition_files(tmp_path, io.EVENTS, "2026-03-01") == [part]


def _events_day(root: Path, names: tuple[str, ...] = ("p1", "p2")) -> list[Path]:
    return [io.write_part(pl.DataFrame({"a": [i]}), root, io.EVENTS, "2026-03-01", name=name)
            for i, name in enumerate(names)]


def test_a_dead_writers_temporary_file_is_removed_by_the_next_write_of_its_partition(tmp_path: Path) -> None:
    """Before: the 0-byte ``.tmp-*.parquet`` a ``kill -9`` mid-ingest leaves stayed for good."""
    parts = _events_day(tmp_path)
    dead = parts[0].parent / ".tmp-0123456789abcdef.parquet"
    dead.write_bytes(b"")
    elsewhere = io.write_part(pl.DataFrame({"a": [1]}), tmp_path, io.EVENTS, "2026-03-02", name="p1").parent
    other = elsewhere / ".tmp-fedcba9876543210.parquet"
    other.write_bytes(b"")
    assert io.partition_files(tmp_path, io.EVENTS, "2026-03-01") == sorted(parts)  # readers skip it
    added = io.write_part(pl.DataFrame({"a": [7]}), tmp_path, io.EVENTS, "2026-03-01", name="p3")
    assert not dead.exists() and other.exists()  # that partition only: its lock says no writer owns it
    assert io.partition_files(tmp_path, io.EVENTS, "2026-03-01") == sorted([*parts, added])
    assert [p.name for p in parts[0].parent.iterdir() if p.name.startswith(".tmp-")] == []


def test_a_part_not_in_the_manifest_fails_the_read_naming_it(tmp_path: Path) -> None:
    """The attack: an extra part dropped into a partition was read unverified."""
    part, _ = _events_day(tmp_path)
    extra = part.with_name("part-extra.parquet")
    shutil.copyfile(part, extra)
    pattern = rf"events part {extra} is not in the checksum manifest .*manifest\.json"
    with pytest.raises(io.CorruptPartError, match=pattern):
        io.partition_files(tmp_path, io.EVENTS, "2026-03-01")
    with pytest.raises(io.CorruptPartError, match=pattern):
        io.verify_part(extra)  # what a shard checks for each file it reads
    with pytest.raises(io.CorruptPartError, match=pattern):
        io.scan_events(tmp_path, date(2026, 3, 1))


def test_a_listed_part_that_is_gone_fails_the_read_naming_it(tmp_path: Path) -> None:
    _, second = _events_day(tmp_path)
    second.unlink()
    with pytest.raises(io.CorruptPartError, match=rf"events part {second} is missing: the checksum manifest"):
        io.partition_files(tmp_path, io.EVENTS, "2026-03-01")
    shutil.rmtree(io.partition_dir(tmp_path, io.EVENTS, "2026-03-01"))  # a day pruned whole is no partition
    assert io.partition_files(tmp_path, io.EVENTS, "2026-03-01") == []


@pytest.mark.parametrize("step", ["add", "remove"])
def test_a_writer_between_the_listing_and_the_manifest_is_no_corruption(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """A reader lists the folder, then reads the manifest; an ingest renaming a part into
    place (or a part removed) in between made a healthy partition fail the read ("is
    missing" / "not in the checksum manifest"): a score next to an ingest of its day."""
    first, second = _events_day(tmp_path)
    real = io._governing_manifest
    calls = {"n": 0}

    def writer_in_between(folder: Path, has_parts: bool) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:  # after the first listing: another process's write or removal completes
            if step == "add":
                io.write_part(pl.DataFrame({"a": [3]}), tmp_path, io.EVENTS, "2026-03-01", name="part-late")
            else:
                io.remove_part(second)
        return real(folder, has_parts)

    monkeypatch.setattr(io, "_governing_manifest", writer_in_between)
    names = sorted(p.name for p in io.partition_files(tmp_path, io.EVENTS, "2026-03-01"))
    assert names == sorted([first.name, *(["part-late.parquet", second.name] if step == "add" else [])])


def test_deleting_the_manifest_does_not_downgrade_the_partition_to_unverified(tmp_path: Path) -> None:
    """The attack: deleting a part's checksum sidecar made it read unverified."""
    part, _ = _events_day(tmp_path)
    manifest = part_manifest_path(tmp_path, io.EVENTS, "2026-03-01")
    manifest.unlink()
    expected = rf"the checksum manifest {manifest} of .* is missing \(the partition was written with one\)"
    with pytest.raises(io.CorruptPartError, match=expected):
        io.partition_files(tmp_path, io.EVENTS, "2026-03-01")
    with pytest.raises(io.CorruptPartError, match=expected):
        io.verify_part(part)
    with pytest.raises(io.CorruptPartError, match=expected):  # a writer does not bless the parts either
        io.write_part(pl.DataFrame({"a": [9]}), tmp_path, io.EVENTS, "2026-03-01", name="p3")


def test_deleting_the_marker_too_is_detected_while_other_manifests_exist(tmp_path: Path) -> None:
    _events_day(tmp_path)
    io.write_part(pl.DataFrame({"a": [1]}), tmp_path, io.EVENTS, "2026-03-02", name="p1")
    marker = io.part_manifests_marker(tmp_path)
    marker.unlink()
    assert len(io.partition_files(tmp_path, io.EVENTS, "2026-03-01")) == 2  # manifests still govern
    part_manifest_path(tmp_path, io.EVENTS, "2026-03-01").unlink()
    with pytest.raises(io.CorruptPartError, match=rf"{marker} is missing although partitions of .* have checksum"):
        io.partition_files(tmp_path, io.EVENTS, "2026-03-01")
    with pytest.raises(io.CorruptPartError, match=rf"{marker} is missing"):  # not re-created over the damage
        io.write_part(pl.DataFrame({"a": [1]}), tmp_path, io.EVENTS, "2026-03-03", name="p1")
    assert not marker.exists()


def test_partitions_written_before_manifests_are_read_as_before_then_adopted(tmp_path: Path) -> None:
    """A data directory from before manifests: per-part records where they exist, else unverified;
    the first write lists them in the marker; adding a part to one adopts it for good."""
    folder = io.partition_dir(tmp_path, io.EVENTS, "2026-03-01")
    folder.mkdir(parents=True)
    recorded, bare = folder / "old-recorded.parquet", folder / "old-bare.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(recorded)
    pl.DataFrame({"a": [2]}).write_parquet(bare)
    record_checksum(recorded, recorded)
    assert io.verify_part(recorded) is True and io.verify_part(bare) is False
    assert io.partition_files(tmp_path, io.EVENTS, "2026-03-01") == [bare, recorded]

    io.write_part(pl.DataFrame({"a": [3]}), tmp_path, io.EVENTS, "2026-03-02", name="new")  # manifests start
    assert json.loads(io.part_manifests_marker(tmp_path).read_text())["legacy"]["events"] == ["2026-03-01"]
    assert io.verify_part(bare) is False  # still read as before
    _flip(recorded, 10)
    with pytest.raises(io.CorruptPartError, match="is corrupt"):
        io.verify_part(recorded)
    _flip(recorded, 10)

    added = io.write_part(pl.DataFrame({"a": [4]}), tmp_path, io.EVENTS, "2026-03-01", name="added")
    manifest = json.loads(part_manifest_path(tmp_path, io.EVENTS, "2026-03-01").read_text())
    assert manifest["parts"][bare.name] == {"sha256": None, "size": None}  # membership checked, bytes unknown
    assert manifest["parts"][recorded.name]["sha256"] == io.file_sha256(recorded)
    assert io.verify_part(added) and io.verify_part(recorded) and io.verify_part(bare) is False
    assert json.loads(io.part_manifests_marker(tmp_path).read_text())["legacy"]["events"] == []
    assert not io.checksum_path(recorded).exists()
    part_manifest_path(tmp_path, io.EVENTS, "2026-03-01").unlink()  # adopted: no way back to unverified
    with pytest.raises(io.CorruptPartError, match="is missing"):
        io.partition_files(tmp_path, io.EVENTS, "2026-03-01")


def test_a_write_cut_short_leaves_the_partition_readable(tmp_path: Path) -> None:
    """Pending entries: listed before the rename, settled after; a reader skips a pending
    entry whose part is absent and takes one whose part is present."""
    part, _ = _events_day(tmp_path)
    path = part_manifest_path(tmp_path, io.EVENTS, "2026-03-01")
    manifest = json.loads(path.read_text())
    entry = manifest["parts"][part.name]
    manifest["pending"] = {"p9.parquet": entry}  # killed between listing and renaming
    path.write_text(json.dumps(manifest))
    assert len(io.partition_files(tmp_path, io.EVENTS, "2026-03-01")) == 2
    shutil.copyfile(part, part.with_name("p9.parquet"))  # killed between renaming and settling
    assert len(io.partition_files(tmp_path, io.EVENTS, "2026-03-01")) == 3 and io.verify_part(part.with_name("p9.parquet"))
    io.write_part(pl.DataFrame({"a": [5]}), tmp_path, io.EVENTS, "2026-03-01", name="p10")  # the next writer settles it
    manifest = json.loads(path.read_text())
    assert manifest["pending"] == {} and {"p9.parquet", "p10.parquet"} <= set(manifest["parts"])


def test_a_failed_write_leaves_the_manifest_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _events_day(tmp_path)
    path = part_manifest_path(tmp_path, io.EVENTS, "2026-03-01")
    before = json.loads(path.read_text())["parts"]
    monkeypatch.setenv(io.FAULT_ENOSPC_ENV, "events")
    with pytest.raises(OSError, match="No space left"):
        io.write_part(pl.DataFrame({"a": [5]}), tmp_path, io.EVENTS, "2026-03-01", name="p3")
    assert json.loads(path.read_text())["parts"] == before

    def refuse(tmp: Path) -> None:
        raise OSError(28, "No space left on device", str(tmp))

    monkeypatch.delenv(io.FAULT_ENOSPC_ENV)
    with pytest.raises(OSError):
        io._write_listed_part(io.partition_dir(tmp_path, io.EVENTS, "2026-03-01") / "p4.parquet", refuse)
    assert json.loads(path.read_text())["parts"] == before and len(io.partition_files(tmp_path, io.EVENTS,
                                                                                     "2026-03-01")) == 2


def _write_parts(root: str, day: str, names: list[str]) -> None:
    for name in names:
        io.write_part(pl.DataFrame({"a": list(range(50))}), Path(root), io.EVENTS, day, name=name)


@pytest.mark.integration  # a real subprocess, server or seconds of work
def test_concurrent_writers_of_different_and_same_days_keep_every_manifest_exact(tmp_path: Path) -> None:
    """Four processes ingest at once: two write days of their own, two share a day. Every
    part ends up listed exactly once, and the marker was made once, listing nothing."""
    import multiprocessing

    jobs = [("2026-03-01", [f"a{i}" for i in range(15)]), ("2026-03-02", [f"b{i}" for i in range(15)]),
            ("2026-03-03", [f"c{i}" for i in range(15)]), ("2026-03-03", [f"d{i}" for i in range(15)])]
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_parts, args=(str(tmp_path), day, names)) for day, names in jobs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    for day in ("2026-03-01", "2026-03-02", "2026-03-03"):
        files = io.partition_files(tmp_path, io.EVENTS, day)
        expected = sorted(f"{n}.parquet" for d, names in jobs if d == day for n in names)
        assert sorted(p.name for p in files) == expected
        manifest = json.loads(part_manifest_path(tmp_path, io.EVENTS, day).read_text())
        assert sorted(manifest["parts"]) == expected and manifest["pending"] == {}
        assert all(io.verify_part(p) for p in files)
    assert json.loads(io.part_manifests_marker(tmp_path).read_text())["legacy"] == {"events": [], "aggregates": []}


@pytest.mark.parametrize("where", ["magic", "first page", "middle", "footer", "last byte"])
def test_a_single_flipped_byte_anywhere_is_caught(tmp_path: Path, where: str) -> None:
    part = io.write_part(pl.DataFrame({"t": list(range(1000)), "s": ["x"] * 1000}), tmp_path, io.EVENTS,
                         "2026-03-01", name="p")
    size = part.stat().st_size
    at = {"magic": 0, "first page": 8, "middle": size // 2, "footer": size - 40, "last byte": size - 1}[where]
    _flip(part, at)
    with pytest.raises(io.CorruptPartError, match=r"events part .*p\.parquet is corrupt: its sha256"):
        io.verify_part(part)
    part.write_bytes(part.read_bytes()[:-10])
    with pytest.raises(io.CorruptPartError, match=r"bytes, \d+ were written \(truncated or replaced\)"):
        io.verify_part(part)


def test_a_part_written_before_checksums_is_read_unverified(tmp_path: Path) -> None:
    part = io.write_part(pl.DataFrame({"a": [1]}), tmp_path, io.EVENTS, "2026-03-01", name="old")
    to_legacy_partition(tmp_path, io.EVENTS, "2026-03-01", records=False)
    assert io.verify_part(part) is False and io.part_intact(part)
    part.write_bytes(b"garbage")
    assert not io.part_intact(part)


def test_a_flipped_byte_in_an_events_part_fails_score_naming_the_file(
        shared_world, day_output_bytes, tmp_path: Path) -> None:
    """The issue's case: one flipped byte silently changed a timestamp and score exited 0."""
    day = shared_world.score_dates[0]
    data, out = _copy(shared_world, tmp_path), tmp_path / "out"
    assert _score(day, data, shared_world.model_dir, out).exit_code == 0
    previous = day_output_bytes(out, day)
    (part,) = io.partition_files(data, io.EVENTS, day)
    _flip(part, part.stat().st_size // 2)

    line = _one_error_line(_score(day, data, shared_world.model_dir, out))

    assert f"events part {part} is corrupt" in line
    assert day_output_bytes(out, day) == previous
    (failure,) = io.partition_dir(out, io.RUNS, day).glob("failed-*.json")
    assert json.loads(failure.read_text())["error"].startswith("CorruptPartError: events part")


def test_a_corrupt_events_part_fails_a_ray_shard_with_its_own_line(
        shared_world, ray_runtime, tmp_path: Path) -> None:
    from uba.scoring.driver import ScoreOptions, score_day

    day = shared_world.score_dates[1]
    data = _copy(shared_world, tmp_path)
    from uba.settings import load_settings

    settings = load_settings(overrides={"paths": {"data_dir": data, "model_dir": shared_world.model_dir,
                                                  "output_dir": tmp_path / "out"}}, env={})
    (part,) = io.partition_files(data, io.EVENTS, day)
    from uba.features import ensure_aggregates

    ensure_aggregates(data, [day], settings)  # so only the shard reads the events
    _flip(part, part.stat().st_size // 3)
    with pytest.raises(io.CorruptPartError) as caught:
        score_day(settings, ScoreOptions(day=day, workers=1))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"events part {part} is corrupt")


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "garbage", "garbage without a record"])
def test_a_corrupt_aggregates_part_is_rebuilt_from_its_events(
        shared_world, day_output_bytes, tmp_path: Path, damage: str) -> None:
    """The issue's case: a truncated or garbage aggregates part gave a 46-line traceback."""
    day = shared_world.score_dates[0]
    data = _copy(shared_world, tmp_path)
    assert _score(day, data, shared_world.model_dir, tmp_path / "clean").exit_code == 0
    lookback_day = date(2026, 3, 5)
    (part,) = io.partition_files(data, io.AGGREGATES, lookback_day)
    original = part.read_bytes()
    if damage == "flipped byte":
        _flip(part, len(original) // 3)
    elif damage == "truncated":
        part.write_bytes(original[: len(original) // 2])
    else:
        part.write_bytes(b"PAR1 not really" * 50)
        if damage == "garbage without a record":
            to_legacy_partition(data, io.AGGREGATES, lookback_day.isoformat(), records=False)

    result = _score(day, data, shared_world.model_dir, tmp_path / "out")

    assert result.exit_code == 0 and "Traceback" not in result.output, result.output[-3000:]
    assert "is corrupt; rebuilding it from the events of 2026-03-05" in result.stderr
    assert part.read_bytes() == original and io.verify_part(part)
    assert day_output_bytes(tmp_path / "out", day) == day_output_bytes(tmp_path / "clean", day)


def test_a_corrupt_aggregates_part_whose_events_are_gone_is_one_line(shared_world, tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    data = _copy(shared_world, tmp_path)
    lookback_day = date(2026, 3, 5)
    (part,) = io.partition_files(data, io.AGGREGATES, lookback_day)
    part.write_bytes(part.read_bytes()[:100])
    shutil.rmtree(io.partition_dir(data, io.EVENTS, lookback_day))

    line = _one_error_line(_score(day, data, shared_world.model_dir, tmp_path / "out"))

    assert f"aggregates part {part} is corrupt" in line and "rebuild" in line
    assert not (tmp_path / "out" / io.SCORES).exists()


def _run_manifest(out: Path, day: date) -> dict[str, Any]:
    return json.loads(io.run_manifest_path(out, day).read_text())


def test_deleting_every_checksum_and_the_marker_is_warned_recorded_and_never_blessed(
        shared_world, tmp_path: Path) -> None:
    """The attack: with `.checksums/` and `.part-manifests.json` deleted, a tampered events
    part was scored silently (exit 0), and the run's first write created a marker that
    passed every partition off as written before manifests, unverified from then on with
    nothing said. Now: every run warns and records the unverified inputs until the
    operator adopts them (`uba-batch verify --adopt-legacy`); then a change is caught."""
    day = shared_world.score_dates[0]
    data, out = _copy(shared_world, tmp_path), tmp_path / "out"
    shutil.rmtree(data / io.CHECKSUMS)
    io.part_manifests_marker(data).unlink()
    (part,) = io.partition_files(data, io.EVENTS, day)
    tampered = pl.read_parquet(part).with_columns(pl.col("user_id").str.replace(r"^u", "x"))
    tampered.write_parquet(part)  # nothing left to tell this from the original
    shutil.rmtree(io.partition_dir(data, io.AGGREGATES, day - timedelta(days=1)))  # the run writes: a marker
    wanted = f"events/event_date={day.isoformat()}"
    for _ in range(2):  # the marker the first run writes blesses nothing: the second run warns again
        result = _score(day, data, shared_world.model_dir, out)
        assert result.exit_code == 0, result.output[-3000:]
        warnings = [line for line in result.stderr.splitlines() if "read unverified" in line]
        assert len(warnings) == 1 and wanted in warnings[0] and "verify --adopt-legacy" in warnings[0]
        assert wanted in _run_manifest(out, day)["inputs"]["unverified_partitions"]
    assert io.part_manifests_marker(data).is_file()

    verify = CliRunner().invoke(cli, ["verify", "--data-dir", str(data)], catch_exceptions=False)
    assert verify.exit_code == 0 and f"unverified: {wanted}" in verify.stdout
    adopt = CliRunner().invoke(cli, ["verify", "--data-dir", str(data), "--adopt-legacy"], catch_exceptions=False)
    assert adopt.exit_code == 0 and f"adopted: {wanted}" in adopt.stdout and " 0 unverified" in adopt.stdout
    result = _score(day, data, shared_world.model_dir, out)
    assert result.exit_code == 0 and "read unverified" not in result.stderr
    assert _run_manifest(out, day)["inputs"]["unverified_partitions"] == []
    _flip(part, part.stat().st_size // 2)  # adopted: a change from now on is caught
    assert f"events part {part} is corrupt" in _one_error_line(_score(day, data, shared_world.model_dir, out))
    failed = CliRunner().invoke(cli, ["verify", "--data-dir", str(data)])
    assert failed.exit_code == 1 and "Traceback" not in failed.output
    assert failed.stderr.strip().splitlines()[-1].startswith("error: 1 partition(s) of ")
    refused = CliRunner().invoke(cli, ["verify", "--data-dir", str(data), "--adopt-legacy"])
    assert refused.exit_code == 1 and "nothing was adopted" in refused.stderr


def test_a_fresh_data_directory_needs_no_adoption(tmp_path: Path) -> None:
    _events_day(tmp_path)
    assert io.verify_data_dir(tmp_path) == {"verified": ["events/event_date=2026-03-01"], "unverified": [],
                                            "corrupt": []}
    assert io.adopt_unverified_partitions(tmp_path) == []
    assert io.unverified_partitions(tmp_path, io.EVENTS, ["2026-03-01", "2026-03-02"]) == []


def _copy_day_over(root: Path, dataset: str, source: str, target: str) -> Path:
    """The tester's attack: one day's parts and manifest copied into another day's folders."""
    target_dir = io.partition_dir(root, dataset, target)
    for part in target_dir.glob("*.parquet"):
        part.unlink()
    for part in io.partition_dir(root, dataset, source).glob("*.parquet"):
        shutil.copy2(part, target_dir / part.name)
    manifest = part_manifest_path(root, dataset, target)
    shutil.copyfile(part_manifest_path(root, dataset, source), manifest)
    return manifest


def test_a_manifest_copied_with_its_parts_from_another_day_is_refused(tmp_path: Path) -> None:
    """Before: 03-08's parts and manifest copied into 03-09's folders passed read and verify."""
    for day in ("2026-03-08", "2026-03-09"):
        io.write_part(pl.DataFrame({"a": [1 if day.endswith("8") else 2]}), tmp_path, io.EVENTS, day, name="p")
    manifest = _copy_day_over(tmp_path, io.EVENTS, "2026-03-08", "2026-03-09")
    pattern = (rf"the checksum manifest {manifest} was written for events/event_date=2026-03-08, not "
               r"events/event_date=2026-03-09")
    with pytest.raises(io.CorruptPartError, match=pattern):
        io.partition_files(tmp_path, io.EVENTS, "2026-03-09")
    with pytest.raises(io.CorruptPartError, match=pattern):
        io.scan_events(tmp_path, date(2026, 3, 9))
    report = io.verify_data_dir(tmp_path)
    assert report["verified"] == ["events/event_date=2026-03-08"]
    assert len(report["corrupt"]) == 1 and str(manifest) in report["corrupt"][0]
    body = json.loads(manifest.read_text())
    body["dataset"] = io.AGGREGATES  # the right day of another dataset is refused too
    body["partition"] = "event_date=2026-03-09"
    manifest.write_text(json.dumps(body))
    with pytest.raises(io.CorruptPartError, match="was written for aggregates/event_date=2026-03-09"):
        io.partition_files(tmp_path, io.EVENTS, "2026-03-09")


def test_another_days_events_copied_over_fail_score_naming_the_manifest(shared_world, tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    data = _copy(shared_world, tmp_path)
    manifest = _copy_day_over(data, io.EVENTS, (day - timedelta(days=1)).isoformat(), day.isoformat())

    line = _one_error_line(_score(day, data, shared_world.model_dir, tmp_path / "out"))

    assert str(manifest) in line and f"not events/event_date={day.isoformat()}" in line
    assert not (tmp_path / "out" / io.SCORES).exists()


def test_another_days_aggregates_copied_over_are_rebuilt_from_the_events(
        shared_world, day_output_bytes, tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    data = _copy(shared_world, tmp_path)
    assert _score(day, data, shared_world.model_dir, tmp_path / "clean").exit_code == 0
    (original,) = io.partition_files(data, io.AGGREGATES, date(2026, 3, 5))
    body = original.read_bytes()
    manifest = _copy_day_over(data, io.AGGREGATES, "2026-03-04", "2026-03-05")

    result = _score(day, data, shared_world.model_dir, tmp_path / "out")

    assert result.exit_code == 0 and "Traceback" not in result.output, result.output[-3000:]
    assert f"the checksum manifest {manifest} was written for aggregates/event_date=2026-03-04" in result.stderr
    (rebuilt,) = io.partition_files(data, io.AGGREGATES, date(2026, 3, 5))
    assert rebuilt.read_bytes() == body and io.verify_part(rebuilt)
    assert day_output_bytes(tmp_path / "out", day) == day_output_bytes(tmp_path / "clean", day)


def test_a_fifo_named_like_a_part_is_refused_without_being_opened(tmp_path: Path) -> None:
    """Before: listed like any part; in a partition read without a manifest, its footer
    check (score, verify, an ingest of that day) waited forever for a writer."""
    import os

    (part,) = _events_day(tmp_path, ("p1",))
    shutil.rmtree(tmp_path / io.CHECKSUMS)  # manifests never written here: read as before them
    io.part_manifests_marker(tmp_path).unlink()
    fifo = part.with_name("part-fifo.parquet")
    os.mkfifo(fifo)
    pattern = rf"events part {fifo} is not a regular file"
    with pytest.raises(io.CorruptPartError, match=pattern):
        io.partition_files(tmp_path, io.EVENTS, "2026-03-01")
    (line,) = io.verify_data_dir(tmp_path)["corrupt"]
    assert f"{fifo} is not a regular file" in line


def test_verify_fails_on_a_missing_data_directory_and_a_partition_that_is_not_a_folder(tmp_path: Path) -> None:
    """`verify` on a mistyped --data-dir said "0 partition(s) verified, 0 failed" and exited
    0, and it skipped an events partition that was a link to nothing (a volume not
    mounted), which `score` then failed on (found by an attack)."""
    missing = CliRunner().invoke(cli, ["verify", "--data-dir", str(tmp_path / "typo")])
    assert missing.exit_code == 1
    assert missing.stderr.strip().splitlines() == [
        f"error: data directory {tmp_path / 'typo'} does not exist or is not a folder: nothing to verify"]
    _events_day(tmp_path)
    folder = io.partition_dir(tmp_path, io.EVENTS, "2026-03-02")
    folder.symlink_to(tmp_path / "unmounted")
    report = io.verify_data_dir(tmp_path)
    assert report["verified"] == ["events/event_date=2026-03-01"]
    assert report["corrupt"] == [f"events partition {folder} is not a folder (a file, or a link to nothing: a volume "
                                 "not mounted?)"]
    failed = CliRunner().invoke(cli, ["verify", "--data-dir", str(tmp_path)])
    assert failed.exit_code == 1 and "1 failed" in failed.stdout


def test_events_changed_compares_the_parts_read_or_for_an_older_manifest_the_rows(tmp_path: Path) -> None:
    """What backfill, monitor and the report use to find a day with late events: the run's
    fingerprint of the parts it read, or, in a manifest from before it, the row count; a
    day whose events were pruned since has nothing to re-score."""
    from uba.manifest import events_changed

    day = date(2026, 3, 1)
    parts = _events_day(tmp_path)
    recorded: Any = {"inputs": {"events_fingerprint": io.parts_fingerprint(parts)}, "counts": {"input_rows": 2}}
    older: Any = {"counts": {"input_rows": 2}}
    assert events_changed(recorded, tmp_path, day) is None
    assert events_changed(older, tmp_path, day) is None
    io.write_part(pl.DataFrame({"a": [7]}), tmp_path, io.EVENTS, day.isoformat(), name="late")
    why = "its events changed after it was scored (2 events scored, 3 stored now)"
    assert events_changed(recorded, tmp_path, day) == why
    assert events_changed(older, tmp_path, day) == why
    shutil.rmtree(io.partition_dir(tmp_path, io.EVENTS, day))
    assert events_changed(recorded, tmp_path, day) is None
