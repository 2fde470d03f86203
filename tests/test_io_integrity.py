"""Stored data is checked against the sha256 recorded when it was written (issue 11, item 7).

Events and aggregates parts get a record under ``<data-dir>/.checksums/`` written by the
io writers before the part is renamed into place. A part whose bytes differ fails a
score run with one line naming it (events), or is rebuilt from its source (aggregates,
derived data). Parts written before records existed are read unverified.
"""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from uba import io


def _copy(trained_dataset, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(trained_dataset.data_dir, data, symlinks=True)
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


def test_writers_record_a_checksum_outside_the_hive_folders(tmp_path: Path) -> None:
    frame = pl.DataFrame({"a": [1, 2, 3]})
    part = io.write_part(frame, tmp_path, io.EVENTS, "2026-03-01", name="part-x")
    record = json.loads(io.checksum_path(part).read_text())
    assert record == {"format": 1, "sha256": io.file_sha256(part), "size": part.stat().st_size}
    assert io.checksum_path(part) == tmp_path / ".checksums" / "events" / "event_date=2026-03-01" / "part-x.parquet.json"
    aggregates = io.write_aggregates(frame, tmp_path, date(2026, 3, 1), "t1")
    assert io.verify_part(aggregates) and io.verify_part(part)
    io.write_aggregates(frame, tmp_path, date(2026, 3, 1), "t2")  # a rebuilt day drops the old record
    assert [p.name for p in io.checksum_path(aggregates).parent.iterdir()] == ["part-t2.parquet.json"]
    # Hive readers never see the records: a directory scan refuses mixed extensions
    assert pl.scan_parquet(tmp_path / io.EVENTS, hive_partitioning=True).collect().height == 3
    quarantine = io.write_part(frame, tmp_path, io.QUARANTINE, "2026-03-01")
    assert not io.checksum_path(quarantine).exists()


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
    io.checksum_path(part).unlink()
    assert io.verify_part(part) is False and io.part_intact(part)
    part.write_bytes(b"garbage")
    assert not io.part_intact(part)


def test_a_flipped_byte_in_an_events_part_fails_score_naming_the_file(
        trained_dataset, day_output_bytes, tmp_path: Path) -> None:
    """The issue's case: one flipped byte silently changed a timestamp and score exited 0."""
    day = trained_dataset.score_dates[0]
    data, out = _copy(trained_dataset, tmp_path), tmp_path / "out"
    assert _score(day, data, trained_dataset.model_dir, out).exit_code == 0
    previous = day_output_bytes(out, day)
    (part,) = io.partition_files(data, io.EVENTS, day)
    _flip(part, part.stat().st_size // 2)

    line = _one_error_line(_score(day, data, trained_dataset.model_dir, out))

    assert f"events part {part} is corrupt" in line
    assert day_output_bytes(out, day) == previous
    (failure,) = io.partition_dir(out, io.RUNS, day).glob("failed-*.json")
    assert json.loads(failure.read_text())["error"].startswith("CorruptPartError: events part")


def test_a_corrupt_events_part_fails_a_ray_shard_with_its_own_line(
        trained_dataset, ray_runtime, tmp_path: Path) -> None:
    from uba.scoring import ScoreOptions, score_day

    day = trained_dataset.score_dates[1]
    data = _copy(trained_dataset, tmp_path)
    from uba.settings import load_settings

    settings = load_settings(overrides={"paths": {"data_dir": data, "model_dir": trained_dataset.model_dir,
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
        trained_dataset, day_output_bytes, tmp_path: Path, damage: str) -> None:
    """The issue's case: a truncated or garbage aggregates part gave a 46-line traceback."""
    day = trained_dataset.score_dates[0]
    data = _copy(trained_dataset, tmp_path)
    assert _score(day, data, trained_dataset.model_dir, tmp_path / "clean").exit_code == 0
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
            io.checksum_path(part).unlink()

    result = _score(day, data, trained_dataset.model_dir, tmp_path / "out")

    assert result.exit_code == 0 and "Traceback" not in result.output, result.output[-3000:]
    assert "is corrupt; rebuilding it from the events of 2026-03-05" in result.stderr
    assert part.read_bytes() == original and io.verify_part(part)
    assert day_output_bytes(tmp_path / "out", day) == day_output_bytes(tmp_path / "clean", day)


def test_a_corrupt_aggregates_part_whose_events_are_gone_is_one_line(trained_dataset, tmp_path: Path) -> None:
    day = trained_dataset.score_dates[0]
    data = _copy(trained_dataset, tmp_path)
    lookback_day = date(2026, 3, 5)
    (part,) = io.partition_files(data, io.AGGREGATES, lookback_day)
    part.write_bytes(part.read_bytes()[:100])
    shutil.rmtree(io.partition_dir(data, io.EVENTS, lookback_day))

    line = _one_error_line(_score(day, data, trained_dataset.model_dir, tmp_path / "out"))

    assert f"aggregates part {part} is corrupt" in line and "rebuild" in line
    assert not (tmp_path / "out" / io.SCORES).exists()
