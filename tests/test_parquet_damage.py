"""Damaged bytes in the files the product reads whole never take down the reading process.

One flipped byte in a data page's header (a value count made negative) made Polars ask
for 2**61 bytes and abort the process (SIGABRT, past any ``except``): a damaged triage
part ended ``alerts list``, and a damaged risk part the API worker serving
``GET /users/{id}/risk``. Those files are now decoded by pyarrow (``io.read_parquet_file``).

Each test writes real parts with the product (a scored day, analysts' tables, a baseline
snapshot), then a child process puts every mutant of a file's page headers in place and
reads it through the product's own reader: each mutant must read or be refused with a
UserError. A mutant that kills the child fails the test, naming the byte.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from api_world import running_server

from uba import io
from uba.alerting.feedback import record_feedback
from uba.alerting.risk import read_risk
from uba.alerting.triage import TRIAGE, TRIAGE_SCHEMA
from uba.errors import UserError
from uba.monitoring.user_evaluation import max_score_ranking
from uba.scoring.driver import ScoreOptions, score_day

# Bytes changed from the start of each page: the page header (type, sizes, value count).
HEADER_BYTES = 16
# At most this many of a file's header bytes, drawn with a fixed seed (a baseline snapshot
# has 140 columns: all of them would take half a minute).
MAX_OFFSETS = 250

CHILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from uba.errors import UserError
    {imports}
    target = Path(sys.argv[1])
    raw = target.read_bytes()
    offsets = [int(o) for o in sys.argv[2].split(",")]
    read = refused = 0
    for at in offsets:
        for value in (0x01, raw[at] ^ 0x80):  # a varint of -1 (a negative value count), a bit flip
            mutant = bytearray(raw)
            mutant[at] = value
            target.write_bytes(bytes(mutant))
            os.write(1, f"mutant {{at}} {{value:#04x}}\\n".encode())
            try:
                {read}
                read += 1
            except UserError:
                refused += 1
    target.write_bytes(raw)
    print(f"done read={{read}} refused={{refused}}")
""")


def page_header_offsets(part: Path, limit: int | None = MAX_OFFSETS) -> list[int]:
    """The first ``HEADER_BYTES`` of each dictionary and data page (``limit`` of them at most)."""
    meta = pq.ParquetFile(part).metadata
    starts: set[int] = set()
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            column = meta.row_group(g).column(c)
            starts.add(column.data_page_offset)
            if column.has_dictionary_page and column.dictionary_page_offset:
                starts.add(column.dictionary_page_offset)
    size = part.stat().st_size
    offsets = sorted({at for start in starts for at in range(start, min(start + HEADER_BYTES, size))})
    return offsets if limit is None or len(offsets) <= limit else sorted(random.Random(7).sample(offsets, limit))


def sweep(part: Path, imports: str, read: str, limit: int | None = MAX_OFFSETS) -> subprocess.CompletedProcess[str]:
    child = CHILD.format(imports=imports, read=read)
    offsets = ",".join(map(str, page_header_offsets(part, limit)))
    return subprocess.run([sys.executable, "-c", child, str(part), offsets], capture_output=True, text=True,
                          timeout=600)


def assert_survived(result: subprocess.CompletedProcess[str], part: Path) -> None:
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, (f"{part.name}: the reader died ({result.returncode}) at "
                                    f"{lines[-1] if lines else 'the start'}: {result.stderr[-1500:]}")
    done = lines[-1].split()
    counts = dict(item.split("=") for item in done[1:])
    assert done[0] == "done" and int(counts["refused"]) > 0, lines[-1]  # the mutants do damage


@pytest.fixture(scope="module")
def scored_day(shared_world, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One day of the shared world scored in-process into a fresh output folder."""
    from uba.settings import load_settings

    out = tmp_path_factory.mktemp("damage") / "out"
    day = shared_world.score_dates[0]
    settings = load_settings(overrides={"paths": {"data_dir": shared_world.data_dir,
                                                  "model_dir": shared_world.model_dir, "output_dir": out}}, env={})
    score_day(settings, ScoreOptions(day=day, in_process=True))
    return out, day


def polars_abort(part: Path) -> tuple[int, int]:
    """The first mutant of ``part``'s page headers that aborts Polars' reader: (offset, byte).
    Without one the sweeps here would prove nothing."""
    polars_reader = "import polars as pl\ndef polars_read(path):\n    try:\n        pl.read_parquet(path)\n" \
                    "    except BaseException:\n        pass"  # a Rust panic (PanicException) is no Exception
    with tempfile.TemporaryDirectory() as scratch:  # a copy: the child dies with a mutant in place
        copy = Path(scratch) / part.name
        copy.write_bytes(part.read_bytes())
        aborts = sweep(copy, polars_reader, "polars_read(target)", limit=None)
    assert aborts.returncode == -signal.SIGABRT, aborts.stdout[-300:] + aborts.stderr[-300:]
    _, at, value = aborts.stdout.strip().splitlines()[-1].split()
    return int(at), int(value, 16)


def polars_scan_breaks(part: Path) -> tuple[int, int]:
    """The first mutant of ``part``'s page headers that a plain Polars scan does not survive
    as an ``Exception`` (a Rust panic or an abort): (offset, byte)."""
    polars_reader = "import polars as pl\ndef polars_read(path):\n    try:\n        pl.scan_parquet(path).collect()\n" \
                    "    except Exception:\n        pass"
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / part.name
        copy.write_bytes(part.read_bytes())
        breaks = sweep(copy, polars_reader, "polars_read(target)", limit=None)
    assert breaks.returncode != 0, breaks.stdout[-300:]
    _, at, value = breaks.stdout.strip().splitlines()[-1].split()
    return int(at), int(value, 16)


def damage(part: Path, at: int, value: int) -> None:
    """Put one byte in place in a published part (a new file: the published one is shared)."""
    path = part.resolve()
    data = bytearray(path.read_bytes())
    data[at] = value
    path.unlink()
    path.write_bytes(bytes(data))


def test_a_risk_part_that_aborts_polars_is_a_one_line_error_for_every_reader(scored_day) -> None:  # type: ignore[no-untyped-def]
    out, day = scored_day
    (part,) = io.partition_files(out, io.RISK, day)
    polars_abort(part)
    ours = sweep(part, "from uba.alerting.risk import read_risk; from datetime import date",
                 f"read_risk(Path({str(out)!r}), date.fromisoformat({day.isoformat()!r}))", limit=None)
    assert_survived(ours, part)


@pytest.mark.parametrize("dataset", ["flagged", "flagged_users"])
def test_every_damaged_alert_table_is_read_or_refused(scored_day, dataset: str) -> None:  # type: ignore[no-untyped-def]
    out, day = scored_day
    what = {"flagged": "alerts", "flagged_users": "user-days"}[dataset]
    (part,) = io.partition_files(out, dataset, day)
    result = sweep(part, "from uba.alerting.records import day_records; from datetime import date",
                   f"day_records(Path({str(out)!r}), date.fromisoformat({day.isoformat()!r}), {what!r})")
    assert_survived(result, part)


def test_a_damaged_scores_part_is_refused_before_evaluate_scans_it(scored_day, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``evaluate``'s ranking by max event score scans ``scores/`` with Polars (a day is too
    big to decode whole): a mutant that ended it with a Rust panic (a BaseException, past
    the ``except Exception`` of the CLI) is refused first by the sha256 the run manifest
    lists, in one line naming the part and the re-score."""
    out, day = scored_day
    served = tmp_path / "out"
    shutil.copytree(out, served, symlinks=True)
    before = max_score_ranking(served, [day])
    assert before.height > 0  # the undamaged day reads
    part = io.partition_files(served, io.SCORES, day)[0]
    damage(part, *polars_scan_breaks(part))
    with pytest.raises(io.CorruptPartError, match=f"scores part {re.escape(str(part))} is corrupt: its sha256 .* "
                       f"the run manifest .* records; re-score {day.isoformat()}"):
        max_score_ranking(served, [day])
    part.unlink()
    with pytest.raises(io.CorruptPartError,
                       match=f"scores part {re.escape(str(part))} listed in the run manifest .* is missing"):
        max_score_ranking(served, [day])


def test_scores_parts_the_run_manifest_does_not_vouch_for_are_refused(scored_day, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A part added after publishing, a manifest entry without its sha256, and parts whose
    manifest is gone are each one line naming what is wrong."""
    out, day = scored_day
    served = tmp_path / "out"
    shutil.copytree(out, served, symlinks=True)
    parts = io.partition_files(served, io.SCORES, day)
    extra = parts[0].with_name("part-99999.parquet")
    shutil.copyfile(parts[0], extra)
    with pytest.raises(io.CorruptPartError, match=f"scores part {re.escape(str(extra))} is not in the run manifest "
                       ".*: it was added after the day was published; re-score"):
        max_score_ranking(served, [day])
    extra.unlink()
    manifest = io.run_manifest_path(served, day).resolve()
    record = json.loads(manifest.read_text())
    del record["outputs"]["scores"]["files"][parts[0].name]["sha256"]
    manifest.write_text(json.dumps(record))
    with pytest.raises(UserError, match=re.escape(f"outputs.scores.files['{parts[0].name}'].sha256 is missing")):
        max_score_ranking(served, [day])
    manifest.unlink()
    folder = io.partition_dir(served, io.SCORES, day)
    with pytest.raises(io.CorruptPartError, match=f"scores partition {re.escape(str(folder))} has parts but no run "
                       f"manifest .*: they cannot be verified; re-score {day.isoformat()}"):
        max_score_ranking(served, [day])


def test_every_damaged_analysts_table_part_is_read_or_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    record_feedback(data, [{"event_id": "e1", "label": "benign", "note": "known scanner"}])
    row = pl.DataFrame([{"alert_id": "a1", "action": "close", "status": "closed", "verdict": "benign",
                         "note": "ok", "analyst": "ann", "alert_type": "event", "user_id": "u1",
                         "event_date": datetime(2026, 3, 9).date(), "suppression_rule": None,
                         "recorded_at": datetime(2026, 3, 10, 12, tzinfo=UTC)}], schema=TRIAGE_SCHEMA)
    io.append_table_part(row, data, TRIAGE)
    for table in (TRIAGE, io.FEEDBACK):
        (part,) = io.table_part_files(data, table)
        result = sweep(part, "from uba import io", f"io.scan_table(Path({str(data)!r}), {table!r})")
        assert_survived(result, part)


def test_every_damaged_baseline_snapshot_is_read_or_refused(shared_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The snapshot the API loads at start and on reload (a copy: scoring tests move it on)."""
    snapshot = io.latest_baseline_snapshot(shared_world.data_dir)
    assert snapshot is not None
    part = tmp_path / io.BASELINE_SNAPSHOT_NAME
    part.write_bytes(snapshot[1].read_bytes())
    result = sweep(part, "from uba import io", f"io.read_baseline_snapshot(Path({str(part)!r}))")
    assert_survived(result, part)


def test_the_api_starts_serves_and_names_the_part_with_parts_that_abort_polars(  # type: ignore[no-untyped-def]
        shared_world, scored_day, tmp_path: Path) -> None:
    """Over HTTP, on a real uvicorn: with a risk part and a triage part that each abort
    Polars, the API started (it aborted, exit 134, while loading entity risk), serves risk
    without the day that does not read, and answers GET /alerts with a 503 naming the part."""
    out, day = scored_day
    data, served = tmp_path / "data", tmp_path / "out"
    shutil.copytree(shared_world.data_dir, data, symlinks=True)
    shutil.copytree(out, served, symlinks=True)
    (risk_part,) = io.partition_files(served, io.RISK, day)
    user = read_risk(served, day)["user_id"][0]  # type: ignore[index]
    damage(risk_part, *polars_abort(risk_part))
    row = pl.DataFrame([{"alert_id": "a1", "action": "close", "status": "closed", "verdict": None, "note": None,
                         "analyst": "ann", "alert_type": "event", "user_id": user, "event_date": day,
                         "suppression_rule": None, "recorded_at": datetime(2026, 3, 10, 12, tzinfo=UTC)}],
                       schema=TRIAGE_SCHEMA)
    io.append_table_part(row, data, TRIAGE)
    (triage_part,) = io.table_part_files(data, TRIAGE)
    damage(triage_part, *polars_abort(triage_part))
    env = {k: v for k, v in os.environ.items() if not k.startswith("UBA_")}
    env.update(UBA_DATA_DIR=str(data), UBA_MODEL_DIR=str(shared_world.model_dir), UBA_API_KEYS="damage-key",
               RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    with running_server(env, tmp_path / "uvicorn.log", uba_api=["--output-dir", str(served)]) as server, \
            server.client(headers={"X-API-Key": "damage-key"}) as client:
        risk = client.get(f"/users/{user}/risk")
        assert risk.status_code == 200 and risk.json()["history"] == [], risk.text
        alerts = client.get("/alerts", params={"date": day.isoformat()})
        assert alerts.status_code == 503, alerts.text
        assert f"triage part {triage_part} is not a readable Parquet file" in alerts.json()["detail"]
        assert client.get("/health").status_code == 200
    log = (tmp_path / "uvicorn.log").read_text()
    assert f"risk part {risk_part} is not a readable Parquet file" in log and "Traceback" not in log


def test_every_damaged_per_user_score_table_of_a_bundle_is_read_or_refused(shared_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The bundle's per-user score table (derived, outside the bundle's checksums), which the
    API reads for per-user cuts; in a copy of the bundle."""
    (table,) = shared_world.model_dir.glob("*/user_scores-q*.parquet")
    bundle = tmp_path / table.parent.name
    shutil.copytree(table.parent, bundle)
    quantile = float(table.stem.removeprefix("user_scores-q"))
    result = sweep(bundle / table.name, "from uba.model.bundle import read_user_score_history",
                   f"read_user_score_history(Path({str(bundle)!r}), {quantile!r})")
    assert_survived(result, bundle / table.name)


HOSTILE = Path(__file__).parent / "hostile" / "parquet"
REFUSALS = {
    "schema_name_nonutf8.parquet": "'utf-8' codec can't decode byte 0xf5 in position 0: invalid start byte",
    "kv_key_nonutf8.parquet": "the metadata of the file is not UTF-8 text",
    "data_utf8.parquet": "Column 0: In chunk 0: Invalid: Invalid UTF8 sequence at string index 0",
    "decimal256.parquet": "column c is decimal256(60, 2), a 256-bit decimal (store it as decimal128 with precision "
                          "<= 38, or double)",
    "date_year_5881580.parquet": "column event_date holds a date32[day] outside the years 1-9999",
    "timestamp_year_146140.parquet": "column recorded_at holds a timestamp[us, tz=UTC] outside the years 1-9999",
    "nested_timestamp_out_of_range.parquet": "column contributions.at holds a timestamp[us] outside the years 1-9999",
    "footer_type_boolean.parquet": "Unencoded byte array data bytes does not support BOOLEAN",
    "rows_and_values_2p40.parquet": "Couldn't deserialize thrift: TProtocolException: Invalid data",
    "date_in_fixed_size_list.parquet": "column d holds a date32[day] outside the years 1-9999",
    "duration_min.parquet": "column d holds a duration[ms] outside the years 1-9999",
    "enum_list_item.parquet": "column s.element carries an extension type, which nothing here writes",
    "dictionary_bomb.parquet": "it decodes to more than 256 MiB (1000 times its size at most)",
    "fixed_size_binary_bomb.parquet": "column user_id holds fixed-size binary values of 8,388,608 bytes "
                                      "(at most 1,024 are read)",
    "flba_8mib_as_decimal_bomb.parquet": "column x holds fixed-size binary values of 8,388,608 bytes "
                                         "(at most 1,024 are read)",
    "opaque_extension_fsb_bomb.parquet": "column o holds fixed-size binary values of 8,388,608 bytes "
                                         "(at most 1,024 are read)",
    "fixed_size_list_uint8_bomb.parquet": "it decodes to more than 256 MiB (1000 times its size at most)",
    "fixed_shape_tensor_uint8_bomb.parquet": "it decodes to more than 256 MiB (1000 times its size at most)",
}
# Still decoded a batch at a time before the cap refuses them (one batch of these is 2 GiB:
# docs/operations.md, "Damaged files read whole"); within the corpus test's 2 GiB address
# space the allocation fails, and the answer must still be a one-line refusal.
KNOWN_GAPS = ("dictionary_bomb_8mib.parquet", "dotted_path_collision_bomb.parquet")
# Read in a child of their own with their peak memory taken (their values, printed, or the
# pages they inflate take more than the corpus test's 2 GiB address space): (shape, MiB at most).
MEMORY = {"dictionary_copy_per_batch_7kB.parquet": ((819_840, 1), 600),
          "dictionary_page_per_rowgroup_retained.parquet": ((6, 1), 1_000)}
# A forged row count only: read batch by batch, the file gives the rows its pages hold (the
# whole read took 1 to 10 GiB for these).
READS = {"rg_num_rows_2p40_small.parquet": (1, 6), "rg_num_rows_2p31m1_small.parquet": (1, 6),
         "rg_num_rows_2p31_risk.parquet": (4, 9)}
OUT_OF_RANGE = "outside the years 1-9999"
SAID_OUT_OF_RANGE = "outside what Python's dates and times hold (years 1-9999, 999,999,999 days)"


def test_every_file_of_the_hostile_parquet_corpus_is_refused_in_one_line() -> None:
    """tests/hostile/parquet/README.md says what each did before: an abort, a panic, a crash
    on print, gigabytes. Read in a child, by path and as bytes, with its address space
    capped at 2 GiB (so a forged row count fails here rather than swapping), printing each
    answer."""
    assert sorted(p.name for p in HOSTILE.glob("*.parquet")) == sorted([*REFUSALS, *READS, *KNOWN_GAPS, *MEMORY])
    child = textwrap.dedent("""
        import resource, sys
        from pathlib import Path
        from uba import io
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        for name in sys.argv[1:]:
            path = Path(name)
            for source in (path, path.read_bytes()):
                try:
                    frame = io.read_parquet_file(source)
                    frame.to_dicts()
                    print(path.name, "read", frame.shape, flush=True)
                except io.UnreadableParquetError as exc:
                    print(path.name, "refused", exc, flush=True)
    """)
    files = sorted(path for path in HOSTILE.glob("*.parquet") if path.name not in MEMORY)
    result = subprocess.run([sys.executable, "-c", child, *map(str, files)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-1000:] + result.stderr[-2000:]
    said = [line.split(" ", 2) for line in result.stdout.splitlines()]
    assert sorted({name for name, answer, _ in said if answer == "refused" and name in KNOWN_GAPS}) == \
        sorted(KNOWN_GAPS)
    said = [line for line in said if line[0] not in KNOWN_GAPS]
    expected = {**{n: ("refused", w.replace(OUT_OF_RANGE, SAID_OUT_OF_RANGE)) for n, w in REFUSALS.items()},
                **{n: ("read", str(shape)) for n, shape in READS.items()}}
    assert [tuple(line) for line in said] == [(n, *expected[n]) for n in sorted(expected) for _ in "ab"]
    assert "panicked" not in result.stderr and "Traceback" not in result.stderr


def _peak_read(paths: list[Path]) -> tuple[list[str], int]:
    """What a fresh child answers reading each of ``paths`` whole, and its peak RSS (MiB)."""
    child = textwrap.dedent("""
        import sys
        from pathlib import Path
        from uba import io
        for name in sys.argv[1:]:
            try:
                print("read", io.read_parquet_file(Path(name)).shape)
            except io.UnreadableParquetError as exc:
                print("refused", exc)
        # VmHWM is this program's own: ru_maxrss keeps the pytest process's across exec
        print(next(int(line.split()[1]) >> 10 for line in open("/proc/self/status") if line.startswith("VmHWM:")))
    """)
    result = subprocess.run([sys.executable, "-c", child, *map(str, paths)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    *answers, peak_mib = result.stdout.splitlines()
    return answers, int(peak_mib)


@pytest.mark.parametrize("name", sorted(MEMORY))
def test_files_that_broke_a_dictionary_read_read_in_bounded_memory(name: str) -> None:
    """Reading text as dictionaries (tried, then withdrawn: docs/operations.md) kept each
    batch's copy of the row group's dictionary, and pyarrow sized each decode by the
    dictionary's mean value length: the 7.7 kB file (641 values of 32 KiB, then 819,200
    empty strings) took 2.27 GiB; the 199 kB one (a 256 MiB dictionary page in each of 6
    one-row row groups) 2.69 GiB. The batch read takes about 230 and 630 MiB."""
    shape, most_mib = MEMORY[name]
    answers, peak_mib = _peak_read([HOSTILE / name])
    assert answers == [f"read {shape}"]
    assert peak_mib < most_mib, peak_mib


def test_valid_files_read_as_pyarrow_reads_them(tmp_path: Path) -> None:
    """What a caller gets equals pyarrow's plain read: plain, nested, null, large and view text
    (a view column failed the dictionary read's cast), also split over row groups (it refused
    nested text spanning them), and a column stored as a dictionary stays one (a Polars
    categorical). A wide fixed-size column is refused only when it is read."""
    import pyarrow as pa

    table = pa.table({
        "user_id": ["u1", None, "u3"],
        "reasons": [["a", "b"], None, []],
        "contributions": [[{"kind": "x", "points": 1.5}], [{"kind": None, "points": 2.0}], None],
        "blob": pa.array([b"\x00\x01", b"", None], pa.binary()),
        "level": pa.array(["low", "high", "low"]).dictionary_encode(),
        "n": [1, 2, 3],
        "view": pa.array(["x", None, "z"], pa.string_view()),  # pyarrow casts no dictionary to a view
        "views": pa.array([["a"], None, []], pa.list_(pa.string_view())),
        "pair": pa.array([["a", "b"], None, ["c", None]], pa.list_(pa.large_string(), 2)),
        "record": pa.array([{"k": b"v"}, None, {"k": None}], pa.struct([("k", pa.binary_view())])),
    })
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    frame = io.read_parquet_file(path)
    assert frame.equals(pl.from_arrow(pq.read_table(path)))
    assert frame.schema["level"] == pl.Categorical and frame.schema["reasons"] == pl.List(pl.String)
    # batches never span row groups: pyarrow joins no nested dictionary chunks, and the first
    # version refused these valid files ("Nested data conversions not implemented")
    for rows in (1, 2):
        split = tmp_path / f"groups-{rows}.parquet"
        pq.write_table(table.drop_columns(["view", "views", "record"]), split, row_group_size=rows)  # no view slicing
        assert io.read_parquet_file(split).equals(pl.from_arrow(pq.read_table(split)))
    wide = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"user_id": ["u1"], "blob": pa.array([b"x" * 2048], pa.binary(2048))}), wide)
    assert io.read_parquet_file(wide, columns=["user_id"]).to_dicts() == [{"user_id": "u1"}]
    with pytest.raises(io.UnreadableParquetError, match="column blob holds fixed-size binary values of 2,048"):
        io.read_parquet_file(wide)
    assert io.read_parquet_file(path, columns=["reasons", "n"]).to_dicts() == [
        {"reasons": ["a", "b"], "n": 1}, {"reasons": None, "n": 2}, {"reasons": [], "n": 3}]


def test_a_repeated_column_or_many_short_values_read_or_refuse_as_before(tmp_path: Path) -> None:
    """A repeated column name asked for by name was a KeyError out of the first dictionary
    read (``users import`` died with a traceback), and a bound it took for small
    dictionaries (rows x dictionary size) refused a valid 11 kB file of 300,000 one-byte
    values in 10 columns as decoding past 256 MiB."""
    import pyarrow as pa

    repeated = tmp_path / "repeated.parquet"
    pq.write_table(pa.table([pa.array(["u1", "u2"]), pa.array(["sales", "it"]), pa.array(["u1", "u2"])],
                            names=["user_id", "department", "user_id"]), repeated)
    with pytest.raises(io.UnreadableParquetError, match="names must be unique"):
        io.read_parquet_file(repeated, columns=["user_id"])
    short = tmp_path / "short.parquet"
    pq.write_table(pa.table({f"c{i}": pa.array(["y" * 100] + ["N"] * 299_999) for i in range(10)}), short)
    assert io.read_parquet_file(short).equals(pl.from_arrow(pq.read_table(short)))
