"""Events partitions laid out as the storage contract allows but ingest never writes.

DESIGN.md's storage is Hive-style Parquet "so Polars, DuckDB, Spark and Arrow read it
as-is"; an operator may also write a day's parts with those tools (then adopt them with
``uba-batch verify --adopt-legacy``). Such parts store the same events with other column
types: strings dictionary-encoded (Polars reads them as Categorical), timestamps in ns or
ms, zoned or naive (naive means UTC), narrower or wider integers, and types that differ
from one part to the next. A day so written must score exactly as the day ingest wrote
(the same rows, values and output schema), in-process and on Ray alike; a part whose
column cannot hold its field fails the run in one line naming the file, publishing
nothing. Before ``io.conform_events`` a dictionary-encoded ``user_id`` failed the
baseline join with a Polars traceback, parts in ns and us failed one scan of the day,
and a ns or zoned timestamp was published as stored; a part named ``part-[0].parquet``
was read as the glob it looks like.

Refused as well, through the CLI, publishing nothing: a part whose ``hour_of_day`` or
``day_of_week`` disagrees with its timestamp (the features read them, so a night login
could be stored as office hours: it scored so), and a day read unverified (no checksum
manifest) that repeats an event id (it scored, the repeats sharing one alert id).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from uba import io
from uba.scoring.driver import ScoreOptions, score_day
from uba.scoring.outputs import SCORE_SORT_KEY
from uba.settings import Settings, load_settings

DAY = date(2026, 3, 9)
Writer = Callable[[pl.DataFrame, Path], None]


def _settings(world: Path, output: Path) -> Settings:
    """A run against the copied world with small shards (several per day) that may run on Ray."""
    return load_settings(env={}, overrides={
        "paths": {"data_dir": world / "data", "model_dir": world / "models", "output_dir": output},
        "scoring": {"chunk_rows": 150}, "ray": {"min_rows_for_ray": 0}})


def _copy(shared_world: Any, dest: Path) -> Path:
    shutil.copytree(shared_world.built / "data", dest / "data", symlinks=True)
    shutil.copytree(shared_world.built / "models", dest / "models", symlinks=True)
    return dest


def _rewrite_day(world: Path, write: Writer) -> None:
    """The day's events written again by ``write``, then adopted as an operator would:
    manifests dropped and ``verify --adopt-legacy`` recording the new parts' sha256."""
    folder = io.partition_dir(world / "data", io.EVENTS, DAY)
    events = pl.read_parquet(sorted(folder.glob("*.parquet")))
    shutil.rmtree(folder)
    folder.mkdir()
    write(events, folder)
    shutil.rmtree(world / "data" / io.CHECKSUMS)
    io.part_manifests_marker(world / "data").unlink()
    io.verify_and_adopt(world / "data", adopt_legacy=True)
    assert not io.unverified_partitions(world / "data", io.EVENTS, [DAY])


def _scores(output: Path) -> pl.DataFrame:
    return pl.read_parquet(io.partition_files(output, io.SCORES, DAY)).sort("event_id")


def _published(output: Path) -> dict[str, bytes]:
    return {f"{dataset}/{p.name}": p.read_bytes() for dataset in (io.SCORES, io.FLAGGED)
            for p in io.partition_files(output, dataset, DAY)}


def _dictionary_strings(events: pl.DataFrame, folder: Path) -> None:
    table = events.to_arrow()
    columns = [c.dictionary_encode() if pa.types.is_large_string(c.type) else c for c in table.columns]
    pq.write_table(pa.table(columns, names=table.column_names), folder / "part-0.parquet", row_group_size=64)


def _categorical_ids(events: pl.DataFrame, folder: Path) -> None:
    events.with_columns(pl.col("user_id", "event_type", "device_type").cast(pl.Categorical)).write_parquet(
        folder / "part-0.parquet")


def _timestamps(unit: str, zone: str | None) -> Writer:
    def write(events: pl.DataFrame, folder: Path) -> None:
        stamp = pl.col("timestamp").dt.cast_time_unit(unit)
        stamp = stamp.dt.convert_time_zone(zone) if zone else stamp.dt.replace_time_zone(None)
        events.with_columns(stamp).write_parquet(folder / "part-0.parquet")
    return write


def _units_differ_between_parts(events: pl.DataFrame, folder: Path) -> None:
    """Two parts of one day, one in us (as ingest writes) and one in ns: one shard reads both."""
    events.head(100).write_parquet(folder / "part-0.parquet")
    events.slice(100).with_columns(pl.col("timestamp").dt.cast_time_unit("ns")).write_parquet(folder / "part-1.parquet")


def _other_integer_widths(events: pl.DataFrame, folder: Path) -> None:
    events.with_columns(pl.col("events_in_session").cast(pl.Int32), pl.col("hour_of_day", "day_of_week").cast(pl.Int64),
                        ).write_parquet(folder / "part-0.parquet")


def _glob_characters_in_names(events: pl.DataFrame, folder: Path) -> None:
    """``part-[0].parquet`` is a legal name; Polars reads a path as a glob by default, so this
    part was planned from its own footer but read as ``part-0.parquet``: rows scored twice."""
    events.head(100).write_parquet(folder / "part-[0].parquet")
    events.slice(100).write_parquet(folder / "part-0.parquet")


def _hidden_files_beside_the_parts(events: pl.DataFrame, folder: Path) -> None:
    """``_x.parquet`` and ``.x.parquet`` are not parts (Hive convention, as Spark and pyarrow
    read a dataset); Polars alone read them, so the day's rows were counted twice."""
    events.write_parquet(folder / "part-0.parquet")
    events.head(100).write_parquet(folder / "_x.parquet")
    events.head(100).write_parquet(folder / ".x.parquet")


LAYOUTS: dict[str, Writer] = {
    "hidden_files_beside_the_parts": _hidden_files_beside_the_parts,
    "glob_characters_in_names": _glob_characters_in_names,
    "dictionary_encoded_strings": _dictionary_strings,
    "categorical_ids": _categorical_ids,
    "timestamps_in_ns": _timestamps("ns", "UTC"),
    "naive_timestamps": _timestamps("us", None),
    "zoned_timestamps": _timestamps("us", "America/New_York"),
    "units_differ_between_parts": _units_differ_between_parts,
    "other_integer_widths": _other_integer_widths,
}


@pytest.fixture(scope="module")
def as_ingested(shared_world: Any, tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    """The day's scores as ingest stored it (in-process): what every layout must reproduce."""
    world = _copy(shared_world, tmp_path_factory.mktemp("as-ingested"))
    output = world / "out"
    score_day(_settings(world, output), ScoreOptions(day=DAY, in_process=True))
    return _scores(output)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_day_written_by_another_tool_scores_as_the_ingested_day(
        layout: str, shared_world: Any, as_ingested: pl.DataFrame, ray_runtime: None, tmp_path: Path) -> None:
    world = _copy(shared_world, tmp_path)
    _rewrite_day(world, LAYOUTS[layout])
    on_ray = score_day(_settings(world, tmp_path / "ray"), ScoreOptions(day=DAY, workers=2))
    local = score_day(_settings(world, tmp_path / "local"), ScoreOptions(day=DAY, in_process=True))

    assert on_ray["execution"]["mode"] == "local" and local["execution"]["mode"] == "in-process"
    assert on_ray["execution"]["shards"] >= 3
    assert _published(tmp_path / "ray") == _published(tmp_path / "local")
    scored = _scores(tmp_path / "local")
    assert scored.schema == as_ingested.schema
    assert scored.equals(as_ingested)
    assert local["counts"]["scored_rows"] == local["counts"]["input_rows"] == as_ingested.height


def _timestamps_as_text(events: pl.DataFrame, folder: Path) -> None:
    events.with_columns(pl.col("timestamp").dt.to_string()).write_parquet(folder / "part-0.parquet")


def _integer_user_ids(events: pl.DataFrame, folder: Path) -> None:
    events.with_columns(pl.col("user_id").str.extract(r"(\d+)").cast(pl.Int64)).write_parquet(folder / "part-0.parquet")


def _hours_beyond_their_type(events: pl.DataFrame, folder: Path) -> None:
    events.with_columns(pl.col("hour_of_day").cast(pl.Int64) * 100).write_parquet(folder / "part-0.parquet")


def _null_event_ids(events: pl.DataFrame, folder: Path) -> None:
    """Ingest never stores an event without an id; another tool's part may: it was scored
    and published with a null event_id (and null timestamps scored without a word)."""
    events.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(None).otherwise(pl.col("event_id"))
                        .alias("event_id")).write_parquet(folder / "part-0.parquet")


REFUSED: dict[str, tuple[Writer, str]] = {
    "null_event_ids": (_null_event_ids, "part-0.parquet: field event_id is empty in 1 rows"),
    "timestamps_as_text": (_timestamps_as_text, "part-0.parquet: field timestamp is stored as String"),
    "integer_user_ids": (_integer_user_ids, "part-0.parquet: field user_id is stored as Int64"),
    "hours_beyond_their_type": (_hours_beyond_their_type, "a value does not fit its field's type"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
@pytest.mark.parametrize("mode", ["in-process", "ray"])
def test_a_part_whose_column_cannot_hold_its_field_is_one_line_and_publishes_nothing(
        case: str, mode: str, shared_world: Any, ray_runtime: None, tmp_path: Path) -> None:
    write, message = REFUSED[case]
    line = _refused_run(shared_world, tmp_path, mode, lambda world: _rewrite_day(world, write))
    assert message in line


def _refused_run(shared_world: Any, tmp_path: Path, mode: str, damage: Callable[[Path], None]) -> str:
    """Score the day through the CLI, ``damage`` the copied world, score again: the second run
    must fail with one ``error:`` line (returned), no traceback, no retry, and leave the
    first run's published output as it was."""
    world = _copy(shared_world, tmp_path)
    output = tmp_path / "out"
    env = {"UBA_DATA_DIR": str(world / "data"), "UBA_MODEL_DIR": str(world / "models"), "UBA_OUTPUT_DIR": str(output),
           "UBA_SCORING__CHUNK_ROWS": "150", "UBA_RAY__MIN_ROWS_FOR_RAY": "0"}
    flags = ["--in-process"] if mode == "in-process" else ["--workers", "2"]
    runner = CliRunner()
    first = runner.invoke(cli, ["score", "--date", DAY.isoformat(), *flags], env=env)
    assert first.exit_code == 0, first.output
    before = _published(output)
    damage(world)

    result = runner.invoke(cli, ["score", "--date", DAY.isoformat(), *flags], env=env)

    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "retries" not in lines[0], "an error about the input is not retried: 'failed after 3 retries' was untrue"
    assert "Traceback" not in result.output
    assert _published(output) == before
    return lines[0]


# Another tool's part whose hour_of_day / day_of_week disagree with its timestamp: the features
# read the stored fields, so such a part forged an event's hour (a night login scored as office
# hours). Each forgery returns the part's rows, the field and the rows it forged.
Forgery = Callable[[pl.DataFrame], tuple[pl.DataFrame, str, list[int]]]
CLOCK_ERROR = re.compile(r"part-0\.parquet: event_id '([^']+)' has (\w+) (-?\d+), but its timestamp (\S+) gives (\d+) "
                         r"\(the UTC (hour|weekday, 0=Monday); \d+ of the \d+ rows read disagree\)")


def _night_login_stored_as_office_hours(events: pl.DataFrame) -> tuple[pl.DataFrame, str, list[int]]:
    row = int(events["timestamp"].dt.hour().arg_min() or 0)  # an event before dawn (UTC)
    forged = pl.when(pl.int_range(pl.len()) == row).then(10).otherwise(pl.col("hour_of_day"))
    return events.with_columns(forged.alias("hour_of_day")), "hour_of_day", [row]


def _weekday_of_another_day(events: pl.DataFrame) -> tuple[pl.DataFrame, str, list[int]]:
    forged = pl.when(pl.int_range(pl.len()) == 7).then((pl.col("day_of_week") + 1) % 7).otherwise(pl.col("day_of_week"))
    return events.with_columns(forged.alias("day_of_week")), "day_of_week", [7]


def _hours_of_a_writer_in_new_york(events: pl.DataFrame) -> tuple[pl.DataFrame, str, list[int]]:
    """Every hour local to New York beside the UTC timestamp (a writer's time zone bug): every
    shard fails, so the run names the first such event of whichever shard failed first."""
    local = pl.col("timestamp").dt.convert_time_zone("America/New_York").dt.hour().cast(pl.Int64)
    return events.with_columns(local.alias("hour_of_day")), "hour_of_day", list(range(events.height))


FORGERIES: dict[str, Forgery] = {
    "night_login_stored_as_office_hours": _night_login_stored_as_office_hours,
    "weekday_of_another_day": _weekday_of_another_day,
    "hours_of_a_writer_in_new_york": _hours_of_a_writer_in_new_york,
}


@pytest.mark.parametrize("case", sorted(FORGERIES))
@pytest.mark.parametrize("mode", ["in-process", "ray"])
def test_an_hour_or_weekday_that_disagrees_with_the_timestamp_fails_naming_the_event(
        case: str, mode: str, shared_world: Any, ray_runtime: None, tmp_path: Path) -> None:
    written: dict[str, Any] = {}

    def write(events: pl.DataFrame, folder: Path) -> None:
        frame, field, rows = FORGERIES[case](events)
        frame.write_parquet(folder / "part-0.parquet")
        written.update(frame=frame, field=field, rows=rows)

    line = _refused_run(shared_world, tmp_path, mode, lambda world: _rewrite_day(world, write))

    found = CLOCK_ERROR.search(line)
    assert found, line
    event_id, field, stored, stamp, derived, _ = found.groups()
    frame, row = written["frame"], written["frame"]["event_id"].index_of(event_id)
    assert field == written["field"] and row in written["rows"], line
    when = frame["timestamp"][row]
    assert stamp == when.isoformat().replace("+00:00", "Z") and int(stored) == frame[field][row]
    assert int(derived) == (when.hour if field == "hour_of_day" else when.weekday()) != int(stored)


def test_a_lookback_day_whose_hours_disagree_with_its_timestamps_aggregates_as_the_true_day(
        shared_world: Any, tmp_path: Path) -> None:
    """Scoring refuses such a part on the scored day; on a lookback day (or in a training
    window) it was read as stored, so a writer's New York hours shifted the user's hour
    profile by five hours without a word. The day's aggregates now equal the true day's."""
    from uba.features.store import ensure_aggregates

    world = _copy(shared_world, tmp_path)
    settings = _settings(world, tmp_path / "out")
    truth = pl.read_parquet(io.partition_files(world / "data", io.AGGREGATES, DAY))

    def write(events: pl.DataFrame, folder: Path) -> None:
        frame, _, _ = _hours_of_a_writer_in_new_york(events)
        assert (frame["hour_of_day"] != events["hour_of_day"]).all()
        frame.write_parquet(folder / "part-0.parquet")

    _rewrite_day(world, write)
    assert ensure_aggregates(world / "data", [DAY], settings) == [DAY], "new events: new aggregates"
    forged = pl.read_parquet(io.partition_files(world / "data", io.AGGREGATES, DAY))
    assert forged.sort("user_id").equals(truth.sort("user_id"))


def test_aggregates_built_by_the_code_that_read_stored_hours_are_rebuilt(
        shared_world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Aggregates are reused while their tag (events, code version, categories) holds, so
    parts that version 2 built from a part with local hours would have kept those hours
    after the fix above: version 3 rebuilds them."""
    from uba.features import store
    from uba.features.aggregates import daily_aggregates

    world = _copy(shared_world, tmp_path)
    settings = _settings(world, tmp_path / "out")
    truth = pl.read_parquet(io.partition_files(world / "data", io.AGGREGATES, DAY))

    def write(events: pl.DataFrame, folder: Path) -> None:
        _hours_of_a_writer_in_new_york(events)[0].write_parquet(folder / "part-0.parquet")

    _rewrite_day(world, write)
    as_stored = pl.concat([pl.scan_parquet(p, glob=False) for p in io.partition_files(world / "data", io.EVENTS, DAY)])
    shifted = daily_aggregates(as_stored.with_columns(pl.lit(DAY).alias("event_date")), settings.events).collect()
    assert not shifted.sort("user_id").equals(truth.sort("user_id")), "the old reading learned shifted hours"
    with monkeypatch.context() as old_code:
        old_code.setattr(store, "AGGREGATES_VERSION", "2")
        fingerprint = io.partition_fingerprint(world / "data", io.EVENTS, DAY)
        assert fingerprint is not None
        io.write_aggregates(shifted, world / "data", DAY, store.aggregate_tag(fingerprint, settings.events))
        assert store.ensure_aggregates(world / "data", [DAY], settings) == [], "version 2 reused its own parts"

    assert store.ensure_aggregates(world / "data", [DAY], settings) == [DAY]
    rebuilt = pl.read_parquet(io.partition_files(world / "data", io.AGGREGATES, DAY))
    assert rebuilt.sort("user_id").equals(truth.sort("user_id"))


def _repeat_two_events_in_an_unverified_day(world: Path) -> None:
    """The day rewritten by another tool with two of its events stored twice, in a data
    directory without checksum manifests (from before them, or all deleted): not adopted."""
    folder = io.partition_dir(world / "data", io.EVENTS, DAY)
    events = pl.read_parquet(sorted(folder.glob("*.parquet")))
    shutil.rmtree(folder)
    folder.mkdir()
    events.write_parquet(folder / "part-0.parquet")
    events.slice(20, 2).write_parquet(folder / "part-1.parquet")
    shutil.rmtree(world / "data" / io.CHECKSUMS)
    io.part_manifests_marker(world / "data").unlink()
    assert io.unverified_partitions(world / "data", io.EVENTS, [DAY])


@pytest.mark.parametrize("mode", ["in-process", "ray"])
def test_scoring_an_unverified_day_that_repeats_an_event_id_is_refused(
        mode: str, shared_world: Any, ray_runtime: None, tmp_path: Path) -> None:
    """Ingest stores an event id once per date and ``verify --adopt-legacy`` refuses a day
    that repeats one, but a day read unverified was checked by neither: it scored, the
    repeated events' alerts sharing one alert id. Now the driver refuses it before any work."""
    line = _refused_run(shared_world, tmp_path, mode, _repeat_two_events_in_an_unverified_day)

    repeated = pl.read_parquet(io.partition_dir(tmp_path / "data", io.EVENTS, DAY) / "part-1.parquet")
    first = sorted(repeated["event_id"].to_list())[0]
    assert f"events/event_date={DAY} holds event_id {first!r} 2 times (and 1 more ids)" in line, line
    assert "re-ingest the day's source" in line and "remove the repeats" in line


def test_a_zoned_timestamp_is_the_same_instant_in_utc(tmp_path: Path) -> None:
    """Converting, not relabelling: 2026-03-09 01:30 in New York is 06:30 UTC."""
    folder = io.partition_dir(tmp_path, io.EVENTS, DAY)
    folder.mkdir(parents=True)
    part = folder / "part-0.parquet"
    pl.DataFrame({
        "event_id": ["e1"], "user_id": ["u1"], "event_type": ["login"], "session_duration_sec": [1.0],
        "events_in_session": [1], "device_type": ["desktop"], "hour_of_day": [6], "day_of_week": [0],
        "session_id": [None],
        "timestamp": pl.Series([1773037800_000_000], dtype=pl.Datetime("us", "UTC")).dt.convert_time_zone(
            "America/New_York"),
    }, schema_overrides={"session_id": pl.String}).write_parquet(part)
    read = io.scan_events(tmp_path, DAY).collect()
    piece = io.read_event_piece(part, 0, 1)
    assert read.equals(piece) and read.schema == pl.Schema(io.EVENT_SCHEMA)
    assert str(read["timestamp"][0]) == "2026-03-09 06:30:00+00:00"


def test_ingest_into_a_day_with_dictionary_encoded_ids_still_finds_duplicates(shared_world: Any,
                                                                             tmp_path: Path) -> None:
    """Ingest's duplicate check reads every stored id of the batch's days at once; Categorical
    ids on one day and strings on the next failed that one scan with a Polars traceback."""
    world = _copy(shared_world, tmp_path)
    _rewrite_day(world, _dictionary_strings)
    as_text = pl.col(pl.Categorical).cast(pl.String)
    stored = pl.read_parquet(io.partition_files(world / "data", io.EVENTS, DAY)).head(3).with_columns(as_text)
    next_day = pl.read_parquet(io.partition_files(world / "data", io.EVENTS, date(2026, 3, 10))).head(2)
    source = tmp_path / "again.parquet"
    pl.concat([stored, next_day]).write_parquet(source)

    result = CliRunner().invoke(cli, ["ingest", str(source), "--data-dir", str(world / "data")])

    assert result.exit_code == 0, result.output
    assert "written 0, quarantined 5" in result.output


def test_adopting_a_day_that_repeats_an_event_id_is_refused(shared_world: Any, tmp_path: Path) -> None:
    """Another tool's output may repeat an event id, which ingest never stores for one date:
    it scored silently (row conservation counts rows, not ids), and the repeated event's
    alerts shared one alert id in triage, feedback and entity risk."""
    world = _copy(shared_world, tmp_path)
    folder = io.partition_dir(world / "data", io.EVENTS, DAY)
    events = pl.read_parquet(sorted(folder.glob("*.parquet")))
    shutil.rmtree(folder)
    folder.mkdir()
    events.write_parquet(folder / "part-0.parquet")
    events.head(2).write_parquet(folder / "part-1.parquet")  # two events stored twice
    shutil.rmtree(world / "data" / io.CHECKSUMS)
    io.part_manifests_marker(world / "data").unlink()

    result = CliRunner().invoke(cli, ["verify", "--adopt-legacy", "--data-dir", str(world / "data")])

    first = sorted(events.head(2)["event_id"].to_list())[0]
    assert result.exit_code == 1, result.output
    assert (f"nothing was adopted: events/event_date={DAY} holds event_id {first!r} 2 times (and 1 more ids)"
            in result.output), result.output
    assert io.unverified_partitions(world / "data", io.EVENTS, [DAY]), "nothing adopted"


def test_a_folder_holding_only_hidden_files_is_no_stored_day(tmp_path: Path) -> None:
    """``_x.parquet`` is not a part (Hive convention), so a dated folder holding nothing else
    is no partition: listing it as a stored day made ``evaluate`` report a day it never read."""
    from uba.monitoring.evaluation import evaluation_days

    frame = pl.DataFrame({"event_id": ["e1"]})
    for day, name in ((date(2026, 3, 1), "part-0.parquet"), (date(2026, 3, 2), "_x.parquet"),
                      (date(2026, 3, 3), ".x.parquet")):
        folder = io.partition_dir(tmp_path, io.EVENTS, day)
        folder.mkdir(parents=True)
        frame.write_parquet(folder / name)
    assert io.partition_dates(tmp_path, io.EVENTS) == [date(2026, 3, 1)]
    assert evaluation_days(tmp_path, date(2026, 2, 28), None, None) == [date(2026, 3, 1)]


def test_a_day_stored_in_no_order_publishes_its_scores_in_order(
        shared_world: Any, as_ingested: pl.DataFrame, tmp_path: Path) -> None:
    """Ingest stores each part in score order and a shard then skips the sort of its scores;
    another tool's part may hold the rows in any order (here shuffled), and the scores are
    then sorted as ever: each part in (timestamp, event_id) order, the same rows as the
    ingested day."""
    world = _copy(shared_world, tmp_path)
    _rewrite_day(world, lambda events, folder: events.sample(fraction=1.0, shuffle=True, seed=3).write_parquet(
        folder / "part-0.parquet"))
    score_day(_settings(world, tmp_path / "out"), ScoreOptions(day=DAY, in_process=True))
    parts = [pl.read_parquet(p) for p in io.partition_files(tmp_path / "out", io.SCORES, DAY)]
    assert len(parts) >= 3
    for part in parts:
        assert part.equals(part.sort(SCORE_SORT_KEY))
    assert pl.concat(parts).sort("event_id").equals(as_ingested)


def test_a_folder_dated_in_another_form_is_no_stored_day(tmp_path: Path) -> None:
    """``event_date=20260302`` (ISO basic form, which ``date.fromisoformat`` reads) was listed
    as the stored day 2026-03-02, though no reader finds parts under that name (they look for
    ``event_date=2026-03-02``): the day counted as one with data, and read as empty."""
    frame = pl.DataFrame({"event_id": ["e1"]})
    for label in ("2026-03-01", "20260302", "2026-W10-2"):
        folder = tmp_path / io.EVENTS / f"{io.PARTITION_COLUMN}={label}"
        folder.mkdir(parents=True)
        frame.write_parquet(folder / "part-0.parquet")
    assert io.partition_dates(tmp_path, io.EVENTS) == [date(2026, 3, 1)]
