"""Ingest on real files: readers, partitions, quarantine, duplicates, atomicity, CLI."""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import os
import random
import signal
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from uba import io as storage
from uba.errors import UserError
from uba.event_rules import MSG_TS_INVALID, MSG_TS_SYNTAX
from uba.ingest.files import detect_format, ingest_files, ingest_frame
from uba.schema import EVENT_SCHEMA, QUARANTINE_SCHEMA
from uba.settings import IngestSettings, Settings

HEADER = ("event_id,user_id,timestamp,event_type,session_duration_sec,events_in_session,"
          "device_type,hour_of_day,day_of_week,session_id")
REPO = Path(__file__).resolve().parents[1]


def settings(batch_rows: int = 250_000) -> Settings:
    return Settings(ingest=IngestSettings(batch_rows=batch_rows))


def stored(data_dir: Path, dataset: str = storage.EVENTS) -> pl.DataFrame:
    """Every finished part of a dataset, with its partition label, in a stable order."""
    frames = [
        pl.read_parquet(part).with_columns(pl.lit(folder.name.split("=", 1)[1]).alias("event_date"))
        for folder in sorted((data_dir / dataset).glob("event_date=*"))
        for part in storage.partition_files(data_dir, dataset, folder.name.split("=", 1)[1])
    ]
    if not frames:
        return pl.DataFrame()
    frame = pl.concat(frames)
    key = ["event_id"] if dataset == storage.EVENTS else ["source_file", "source_row"]
    return frame.sort(key)


# ------------------------------------------------------------------ the malformed file

GOOD_ROWS = {
    # line text -> expected stored values
    "g1,u1,2026-03-02T09:15:00Z,login,120.5,4,desktop,9,0,s1":
        ("g1", "u1", datetime(2026, 3, 2, 9, 15, tzinfo=UTC), "login", 120.5, 4, "desktop", 9, 0, "s1"),
    "g2,42,2026-03-02 10:00:00+02:00,view,0,1,mobile,,,":
        ("g2", "42", datetime(2026, 3, 2, 8, 0, tzinfo=UTC), "view", 0.0, 1, "mobile", 8, 0, None),
    "g3,u2,2026-03-02T23:30:00.250-01:00, CLICK ,15,2,Desktop,,,":
        ("g3", "u2", datetime(2026, 3, 3, 0, 30, 0, 250000, tzinfo=UTC), "click", 15.0, 2, "desktop", 0, 1, None),
    "g4,  u9  ,2026-03-03T12:00:00,download,7e2,3.0,mobile,12,1,":
        ("g4", "u9", datetime(2026, 3, 3, 12, 0, tzinfo=UTC), "download", 700.0, 3, "mobile", 12, 1, None),
    "g5,u3,2026-03-02T09:15:00,logout,1,1,desktop,,,":
        ("g5", "u3", datetime(2026, 3, 2, 9, 15, tzinfo=UTC), "logout", 1.0, 1, "desktop", 9, 0, None),
    "old1,u1,2026-03-04T08:00:00Z,login,5,1,desktop,,,":
        ("old1", "u1", datetime(2026, 3, 4, 8, 0, tzinfo=UTC), "login", 5.0, 1, "desktop", 8, 2, None),
}
LONG = "x" * 300
BAD_ROWS: list[tuple[str, str]] = [
    (",u1,2026-03-02T09:00:00Z,login,1,1,desktop,,,", "missing field: event_id"),
    ("b2,u1,2026-03-02T09:00:00Z,login,1,1,,,,", "missing field: device_type"),
    ("b3,   ,2026-03-02T09:00:00Z,login,1,1,desktop,,,", "missing field: user_id"),
    (",,,,,,,,,", "empty row (no values)"),
    ("", "empty row (no values)"),
    ("b6,u1,yesterday,login,1,1,desktop,,,", f"timestamp: 'yesterday' {MSG_TS_SYNTAX}"),
    ("b7,u1,2026-02-30T10:00:00,login,1,1,desktop,,,",
     f"timestamp: '2026-02-30T10:00:00' {MSG_TS_INVALID}"),
    ("b8,u1,2026-03-02,login,1,1,desktop,,,", f"timestamp: '2026-03-02' {MSG_TS_SYNTAX}"),
    ("b9,u1,2026-03-02T09:00:00Z,hack,1,1,desktop,,,",
     "event_type: 'hack' not one of login, logout, view, click, download"),
    ("b10,u1,2026-03-02T09:00:00Z,login,1,1,tablet,,,", "device_type: 'tablet' not one of desktop, mobile"),
    ("b11,u1,2026-03-02T09:00:00Z,login,-5,1,desktop,,,", "session_duration_sec: -5 is negative"),
    ("b12,u1,2026-03-02T09:00:00Z,login,NaN,1,desktop,,,", "session_duration_sec: 'NaN' is not a finite number"),
    ("b13,u1,2026-03-02T09:00:00Z,login,abc,1,desktop,,,", "session_duration_sec: 'abc' is not a number"),
    ("b14,u1,2026-03-02T09:00:00Z,login,true,1,desktop,,,", "session_duration_sec: 'true' is not a number"),
    ("b15,u1,2026-03-02T09:00:00Z,login,9999999,1,desktop,,,",
     "session_duration_sec: 9999999 exceeds maximum 604800"),
    ("b16,u1,2026-03-02T09:00:00Z,login,1,0,desktop,,,", "events_in_session: 0 is less than 1"),
    ("b17,u1,2026-03-02T09:00:00Z,login,1,1.5,desktop,,,", "events_in_session: '1.5' is not an integer"),
    ("b18,u1,2026-03-02T09:00:00Z,login,1,1000001,desktop,,,",
     "events_in_session: 1000001 exceeds maximum 100000"),
    ("b19,u1,2026-03-02T09:00:00Z,login,1,1,desktop,24,,", "hour_of_day: 24 out of range 0-23"),
    ("b20,u1,2026-03-02T09:00:00Z,login,1,1,desktop,,7,", "day_of_week: 7 out of range 0-6 (0=Monday)"),
    ("b21,u1,2026-03-02T09:00:00Z,login,1,1,desktop,3,,", "hour_of_day: 3 disagrees with timestamp hour 9 (UTC)"),
    ("b22,u1,2026-03-02T09:00:00Z,login,1,1,desktop,,4,",
     "day_of_week: 4 disagrees with timestamp weekday 0 (UTC, 0=Monday)"),
    ("b23,u1,2026-03-02T09:00:00Z,login,1,1,desktop,nine,,", "hour_of_day: 'nine' is not an integer"),
    (f"{LONG},u1,2026-03-02T09:00:00Z,login,1,1,desktop,,,", "event_id: longer than 256 characters"),
    ("b25,u\t1,2026-03-02T09:00:00Z,login,1,1,desktop,,,", "user_id: 'u?1' contains control, invisible or format characters, or invalid UTF-8 (the first as UTF-8: 09)"),
    (f"b26,u1,2026-03-02T09:00:00Z,login,1,1,desktop,,,{LONG}", "session_id: longer than 256 characters"),
    ("g1,u1,2026-03-02T09:15:00Z,login,120.5,4,desktop,9,0,s1",
     "event_id: 'g1' duplicated in this batch (first seen at row 1)"),
    ("b28,u1,2026-03-02T09:00:00Z,login,1,1,desktop,,,,surplus",
     "row has 11 fields, header has 10 (extra: 'surplus')"),
    ("old1,u1,2026-03-04T08:00:00Z,login,5,1,desktop,,,", "event_id: 'old1' already stored for 2026-03-04"),
    ("b30,u1,2026-03-02T09:00:00Z,login,inf,1,desktop,,,", "session_duration_sec: 'inf' is not a finite number"),
    ("b31,u1,2026-03-02T09:00:00+25:00,login,1,1,desktop,,,",
     f"timestamp: '2026-03-02T09:00:00+25:00' {MSG_TS_INVALID}"),
    ("b33,u1,2026-03-02T09:15,logout,1,1,desktop,,,", f"timestamp: '2026-03-02T09:15' {MSG_TS_SYNTAX}"),
]
INVALID_UTF8 = b"b32,u\xff\xfe,2026-03-02T09:00:00Z,login,1,1,desktop,,,"


def write_malformed(path: Path) -> dict[int, str]:
    """Good and bad lines interleaved; returns the expected reason per data row."""
    good = list(GOOD_ROWS)
    lines: list[bytes] = [HEADER.encode()]
    expected: dict[int, str] = {}
    for i, (text, reason) in enumerate(BAD_ROWS):
        if i < len(good) - 1:  # old1 (the stored duplicate) is ingested separately first
            lines.append(good[i].encode())
        lines.append(text.encode())
        expected[len(lines) - 1] = reason
    lines.append(INVALID_UTF8)
    offset = sum(len(line) + 1 for line in lines[:-1]) + INVALID_UTF8.index(b"\xff")
    expected[len(lines) - 1] = (  # bytes of the file that are not UTF-8: where, and the cure (io.not_utf8_problem)
        f"user_id: 'u??' holds bytes that are not UTF-8 (shown as ?): line {len(lines)} holds the byte 0xff "
        f"(byte offset {offset} of the file), which is not valid UTF-8; save the file as UTF-8 (a spreadsheet's "
        "\"CSV UTF-8\" format) and try again")
    path.write_bytes(b"\n".join(lines) + b"\n")
    return expected


def test_malformed_file_every_row_accounted_for_with_exact_reasons(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = tmp_path / "first.csv"
    first.write_text(HEADER + "\nold1,u1,2026-03-04T08:00:00Z,login,5,1,desktop,,,\n")
    ingest_files([first], data, settings())
    source = tmp_path / "mixed.csv"
    expected = write_malformed(source)

    summary = ingest_files([source], data, settings())

    good_count = len(GOOD_ROWS) - 1
    assert len(expected) >= 30 and len(set(expected.values())) >= 28
    assert summary.rows_read == good_count + len(expected)
    assert (summary.rows_written, summary.rows_quarantined) == (good_count, len(expected))
    quarantine = stored(data, storage.QUARANTINE).filter(pl.col("source_file") == str(source))
    assert dict(zip(quarantine["source_row"], quarantine["reason"], strict=True)) == expected
    assert set(QUARANTINE_SCHEMA) <= set(quarantine.columns)
    # the unusable timestamps sit under event_date=unknown, the others under their UTC date
    unknown = quarantine.filter(pl.col("event_date") == "unknown")["source_row"].to_list()
    assert sorted(unknown) == sorted(r for r, why in expected.items() if why.startswith(("timestamp:", "empty row")))
    # original values survive as text, untrimmed
    b3 = quarantine.filter(pl.col("event_id") == "b3")
    assert b3.item(0, "user_id") == "   " and b3.item(0, "session_duration_sec") == "1"
    events = stored(data)
    for line, values in GOOD_ROWS.items():
        row = events.filter(pl.col("event_id") == values[0]).drop("event_date")
        assert row.height == 1, line
        assert row.row(0) == values, line
    assert summary.reasons["duplicate event_id"] == 2
    assert sum(summary.reasons.values()) == summary.rows_quarantined


def test_unknown_partition_holds_only_unusable_timestamps(tmp_path: Path) -> None:
    source = tmp_path / "t.csv"
    source.write_text(HEADER + "\n"
                      "a,u1,never,login,1,1,desktop,,,\n"
                      ",u1,2026-03-02T09:00:00Z,login,1,1,desktop,,,\n"
                      "c,u1,,login,1,1,desktop,,,\n")
    ingest_files([source], tmp_path / "d", settings())
    q = stored(tmp_path / "d", storage.QUARANTINE)
    assert q.select("event_id", "event_date").rows() == [("a", "unknown"), (None, "2026-03-02"), ("c", "unknown")]


# ------------------------------------------------------------------ same events, four formats


def sample_events(n: int, seed: int = 7) -> pl.DataFrame:
    """Typed events over three days, with a few bad rows, as Parquet would carry them."""
    rng = np.random.default_rng(seed)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    seconds = np.sort(rng.integers(0, 3 * 86400, n))
    frame = pl.DataFrame({
        "event_id": [f"ev{i:06d}" for i in range(n)],
        "user_id": rng.integers(1, 60, n),
        "timestamp": [start + timedelta(seconds=int(s), microseconds=int(s % 7) * 1000) for s in seconds],
        "event_type": rng.choice(["login", "logout", "view", "click", "download"], n),
        "session_duration_sec": np.round(rng.exponential(600, n), 3),
        "events_in_session": rng.integers(1, 50, n),
        "device_type": rng.choice(["desktop", "mobile"], n),
    })
    bad = {5: ("event_type", "hack"), 17: ("device_type", "tablet"), 1200: ("event_type", "x")}
    types = frame["event_type"].to_list()
    devices = frame["device_type"].to_list()
    for row, (col, value) in bad.items():
        if row < n:
            (types if col == "event_type" else devices)[row] = value
    ids = frame["event_id"].to_list()
    if n > 1500:
        ids[1500] = ids[900]  # same UTC day, later batch
    return frame.with_columns(pl.Series("event_type", types), pl.Series("device_type", devices),
                              pl.Series("event_id", ids))


def write_all_formats(frame: pl.DataFrame, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    text = frame.with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"))
    paths = {fmt: folder / f"events.{fmt}" for fmt in ("csv", "jsonl", "json", "parquet")}
    text.write_csv(paths["csv"])
    records = text.to_dicts()
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in records))
    paths["json"].write_text(json.dumps(records, indent=1))
    frame.write_parquet(paths["parquet"])
    return paths


@pytest.mark.integration  # a real subprocess, server or seconds of work
def test_csv_jsonl_json_parquet_give_identical_partitions(tmp_path: Path) -> None:
    frame = sample_events(2500)
    paths = write_all_formats(frame, tmp_path / "in")
    results = {}
    for fmt, path in paths.items():
        data = tmp_path / f"data-{fmt}"
        summary = ingest_files([path], data, settings(batch_rows=1000))
        assert summary.rows_read == 2500 and summary.rows_quarantined == 4, fmt
        events = stored(data)
        quarantine = stored(data, storage.QUARANTINE)
        assert sorted(p.name for p in (data / "events").iterdir()) == [
            "event_date=2026-03-01", "event_date=2026-03-02", "event_date=2026-03-03"]
        results[fmt] = (events, quarantine.select("event_id", "reason", "event_date", "source_row"))
    reference_events, reference_quarantine = results["csv"]
    assert reference_events.height == 2496
    assert reference_events.drop("event_date").schema == pl.Schema(EVENT_SCHEMA)
    assert reference_quarantine["reason"].to_list() == [
        "event_type: 'hack' not one of login, logout, view, click, download",
        "device_type: 'tablet' not one of desktop, mobile",
        "event_type: 'x' not one of login, logout, view, click, download",
        "event_id: 'ev000900' already stored for 2026-03-02",
    ]
    for fmt, (events, quarantine) in results.items():
        assert events.equals(reference_events), fmt
        assert quarantine.equals(reference_quarantine), fmt
    # integer user ids are stored as their decimal text
    assert reference_events["user_id"].to_list()[:3] == [str(v) for v in frame["user_id"][:3]]


def test_parts_are_sorted_by_timestamp_then_event_id(tmp_path: Path) -> None:
    frame = sample_events(300).sample(fraction=1.0, shuffle=True, seed=3)
    data = tmp_path / "d"
    ingest_frame(frame, data, settings())
    for day in storage.partition_dates(data, storage.EVENTS):
        for part in storage.partition_files(data, storage.EVENTS, day):
            rows = pl.read_parquet(part)
            assert rows.equals(rows.sort(["timestamp", "event_id"]))


def test_reingesting_a_file_adds_nothing(tmp_path: Path) -> None:
    path = write_all_formats(sample_events(1200), tmp_path / "in")["csv"]
    data = tmp_path / "data"
    first = ingest_files([path], data, settings(batch_rows=1000))
    before = stored(data)
    second = ingest_files([path], data, settings(batch_rows=1000))
    assert stored(data).equals(before)
    assert (second.rows_read, second.rows_written, second.rows_quarantined) == (1200, 0, 1200)
    assert second.reasons == {"duplicate event_id": first.rows_written,
                              "unknown category": first.rows_quarantined}


def test_fast_and_record_by_record_csv_paths_agree(tmp_path: Path) -> None:
    clean = tmp_path / "clean.csv"
    sample = sample_events(200).with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"))
    sample.write_csv(clean)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text(clean.read_text() + "zz,1,2026-03-01T00:00:00Z,view,1,1,desktop,extra\n")
    a = ingest_files([clean], tmp_path / "a", settings())
    b = ingest_files([ragged], tmp_path / "b", settings())
    assert b.rows_read == a.rows_read + 1
    assert stored(tmp_path / "a").equals(stored(tmp_path / "b"))
    assert b.reasons["unreadable record"] == 1


def test_quoted_fields_with_line_breaks_across_batches(tmp_path: Path) -> None:
    def row(i: int) -> str:
        session = f'"line {i}\nbreak"' if i % 7 == 0 else f'"say ""hi"" {i}"'
        return f'q{i:04d},"user, {i}",2026-03-01T10:00:00Z,view,1,1,desktop,,,{session}'

    path = tmp_path / "quoted.csv"
    path.write_text(HEADER + "\n" + "\n".join(row(i) for i in range(2100)) + "\n")
    summary = ingest_files([path], tmp_path / "d", settings(batch_rows=1000))
    broken = [i for i in range(2100) if i % 7 == 0]
    assert (summary.rows_read, summary.rows_quarantined) == (2100, len(broken))
    events = stored(tmp_path / "d")
    assert events.filter(pl.col("event_id") == "q1999").select("user_id", "session_id").row(0) == (
        "user, 1999", 'say "hi" 1999')
    q = stored(tmp_path / "d", storage.QUARANTINE)
    assert q["source_row"].to_list() == [i + 1 for i in broken]
    assert {reason.split("' ", 1)[1] for reason in q["reason"]} == {"contains control, invisible or format characters, or invalid UTF-8 (the first as UTF-8: 0a)"}
    assert q.item(1, "session_id") == "line 7\nbreak"


def test_batches_never_cut_a_quoted_field(tmp_path: Path) -> None:
    # every record spans three lines, so a cut after 1000 lines would land inside one
    path = tmp_path / "multiline.csv"
    path.write_text(HEADER + "\n" + "".join(
        f'q{i},u,2026-03-01T10:00:00Z,view,1,1,desktop,,,"a\nb\nc"\n' for i in range(2500)))
    summary = ingest_files([path], tmp_path / "d", settings(batch_rows=1000))
    assert summary.rows_read == 2500
    q = stored(tmp_path / "d", storage.QUARANTINE)
    assert q["source_row"].to_list() == list(range(1, 2501))
    assert q["event_id"].to_list() == [f"q{i}" for i in range(2500)]
    assert q["session_id"].unique().to_list() == ["a\nb\nc"]


def test_a_stray_quote_does_not_swallow_the_file(tmp_path: Path) -> None:
    rows = [f"s{i},u{i},2026-03-01T10:00:00Z,view,1,1,desktop,,," for i in range(3000)]
    rows[10] = 's10,u"10,2026-03-01T10:00:00Z,view,1,1,desktop,,,'
    path = tmp_path / "stray.csv"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    summary = ingest_files([path], tmp_path / "d", settings(batch_rows=1000))
    assert (summary.rows_read, summary.rows_written) == (3000, 3000)
    assert stored(tmp_path / "d").filter(pl.col("event_id") == "s10").item(0, "user_id") == 'u"10'


def test_csv_with_bom_crlf_and_spaced_header(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfevent_id, user_id ,timestamp,event_type,session_duration_sec,"
                     b"events_in_session,device_type\r\n"
                     b"e1,u1,2026-03-01T10:00:00Z,view,1,1,desktop\r\n"
                     b"e2,u1,2026-03-01T10:00:00Z,view,1,1,desktop\r\n")
    summary = ingest_files([path], tmp_path / "d", settings())
    assert (summary.rows_written, summary.files[0].ignored_columns) == (2, [])
    assert stored(tmp_path / "d")["user_id"].to_list() == ["u1", "u1"]


# ------------------------------------------------------------------ JSON readers


def test_jsonl_bad_lines_are_quarantined_with_line_numbers(tmp_path: Path) -> None:
    good = {"event_id": "j1", "user_id": 7, "timestamp": "2026-03-01T10:00:00+01:00", "event_type": "view",
            "session_duration_sec": 3, "events_in_session": 2, "device_type": "mobile", "hour_of_day": 9}
    lines = [json.dumps(good), "", "{not json", "[1, 2]",
             json.dumps({**good, "event_id": "j2", "session_duration_sec": True}),
             json.dumps({**good, "event_id": "j3", "user_id": "u3", "extra": {"nested": [1]}}), "   "]
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(lines) + "\n")
    summary = ingest_files([path], tmp_path / "d", settings())
    assert (summary.rows_read, summary.rows_written, summary.rows_quarantined) == (5, 2, 3)
    q = stored(tmp_path / "d", storage.QUARANTINE)
    assert dict(zip(q["source_row"], q["reason"], strict=True)) == {
        3: "line is not valid JSON (Expecting property name enclosed in double quotes at column 2): '{not json'",
        4: "line is not a JSON object: [1, 2]",
        5: "session_duration_sec: must be a number, not a boolean",
    }
    events = stored(tmp_path / "d")
    assert events.select("event_id", "user_id").rows() == [("j1", "7"), ("j3", "u3")]
    assert events.item(0, "timestamp") == datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def test_json_array_elements_and_syntax_errors(tmp_path: Path) -> None:
    good = {"event_id": "a1", "user_id": "u", "timestamp": "2026-03-01T10:00:00Z", "event_type": "view",
            "session_duration_sec": 1.5, "events_in_session": 1, "device_type": "desktop"}
    path = tmp_path / "a.json"
    path.write_text(json.dumps([good, 42, {**good, "event_id": "a2"}, None]))
    summary = ingest_files([path], tmp_path / "d", settings())
    assert (summary.rows_read, summary.rows_written) == (4, 2)
    q = stored(tmp_path / "d", storage.QUARANTINE)
    assert q.select("source_row", "reason").rows() == [
        (2, "element is not a JSON object: 42"), (4, "element is not a JSON object: null")]
    broken = tmp_path / "broken.json"
    broken.write_text('[{"event_id": "x"}, {"event_id": ]')
    with pytest.raises(UserError, match=r"broken.json: not a valid JSON array at element 2"):
        ingest_files([broken], tmp_path / "d2", settings())
    runs = list((tmp_path / "d2" / "ingest_runs").glob("*.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_text())["status"] == "failed"
    not_array = tmp_path / "obj.json"
    not_array.write_text('{"event_id": "x"}')
    with pytest.raises(UserError, match="must hold one JSON array"):
        ingest_files([not_array], tmp_path / "d3", settings())


def test_gzip_inputs(tmp_path: Path) -> None:
    paths = write_all_formats(sample_events(50), tmp_path / "in")
    for fmt in ("csv", "jsonl"):
        gz = tmp_path / f"events.{fmt}.gz"
        gz.write_bytes(gzip.compress(paths[fmt].read_bytes()))
        summary = ingest_files([gz], tmp_path / f"d-{fmt}", settings())
        assert (summary.rows_read, summary.files[0].format) == (50, fmt)
    assert stored(tmp_path / "d-csv").equals(stored(tmp_path / "d-jsonl"))


# ------------------------------------------------------------------ inputs and formats


def test_glob_and_format_override(tmp_path: Path) -> None:
    frame = sample_events(30)
    for day in range(3):
        part = frame.filter(pl.col("timestamp").dt.day() == day + 1)
        write_all_formats(part, tmp_path / f"in{day}")
    summary = ingest_files([str(tmp_path / "in*" / "events.csv")], tmp_path / "d", settings())
    assert [Path(f.path).parent.name for f in summary.files] == ["in0", "in1", "in2"]
    assert summary.rows_read == 30
    dump = tmp_path / "dump.txt"
    dump.write_bytes((tmp_path / "in0" / "events.jsonl").read_bytes())
    with pytest.raises(UserError, match=r"cannot tell the format of .*dump.txt.*--format"):
        ingest_files([dump], tmp_path / "e", settings())
    summary = ingest_files([dump], tmp_path / "e", settings(), fmt="jsonl")
    assert summary.files[0].format == "jsonl" and summary.rows_written > 0
    assert detect_format(Path("x.ndjson")) == "jsonl" and detect_format(Path("x.CSV.gz")) == "csv"
    with pytest.raises(UserError, match="gzip is supported for csv, json and jsonl"):
        detect_format(Path("x.parquet.gz"))


def test_bad_inputs_fail_before_anything_is_written(tmp_path: Path) -> None:
    good = write_all_formats(sample_events(10), tmp_path / "in")["csv"]
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"not parquet at all")
    cases = {
        "input file not found: ": [good, tmp_path / "missing.csv"],
        "no files match ": [good, str(tmp_path / "nothing-*.csv")],
        "is a directory": [good, tmp_path / "in"],
        "cannot read .*corrupt.parquet as parquet": [good, corrupt],
    }
    for message, inputs in cases.items():
        with pytest.raises(UserError, match=message):
            ingest_files(inputs, tmp_path / "d", settings())
    assert not (tmp_path / "d").exists()


@pytest.mark.integration  # a real subprocess, server or seconds of work
def test_cli_user_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "UBA_DATA_DIR": str(tmp_path / "d")}
    for args, message in ([str(tmp_path / "missing.csv")], "error: input file not found: "), \
                         ([str(tmp_path / "none-*.jsonl")], "error: no files match "):
        done = subprocess.run([str(Path(sys.executable).parent / "uba-batch"), "ingest", *args],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
        assert done.returncode == 1
        assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
        assert "Traceback" not in done.stderr


def test_cli_prints_table_or_json_and_keeps_the_summary(tmp_path: Path) -> None:
    path = write_all_formats(sample_events(40), tmp_path / "in")["jsonl"]
    runner = CliRunner()
    result = runner.invoke(cli, ["ingest", str(path), "--data-dir", str(tmp_path / "d"), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    kept = json.loads(Path(printed["summary_path"]).read_text())
    assert kept == printed
    assert printed["rows_read"] == 40 == printed["rows_written"] + printed["rows_quarantined"]
    assert printed["status"] == "ok" and printed["files"][0]["format"] == "jsonl"
    assert Path(printed["summary_path"]).parent == tmp_path / "d" / "ingest_runs"
    result = runner.invoke(cli, ["ingest", str(path), "--data-dir", str(tmp_path / "d"), "--format", "jsonl",
                                 "--batch-rows", "1000"])
    assert result.exit_code == 0
    assert "rows quarantined" in result.stdout and "duplicate event_id" in result.stdout
    result = runner.invoke(cli, ["ingest", str(path), "--batch-rows", "5", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1 and "ingest.batch_rows" in result.stderr
    result = runner.invoke(cli, ["ingest", "--help"])
    assert "Example:" in result.stdout and "--format" in result.stdout


# ------------------------------------------------------------------ frames, atomicity


def test_ingest_frame_accepts_typed_frames_and_is_idempotent(tmp_path: Path) -> None:
    frame = sample_events(120).with_columns(session_id=pl.lit("s"))
    data = tmp_path / "d"
    summary = ingest_frame(frame.lazy(), data, settings(), source="generate")
    assert summary.files[0].path == "generate" and summary.rows_written == 118
    again = ingest_frame(frame, data, settings(), source="generate")
    assert (again.rows_written, again.reasons) == (0, {"duplicate event_id": 118, "unknown category": 2})
    assert stored(data)["session_id"].unique().to_list() == ["s"]
    q = stored(data, storage.QUARANTINE)
    assert set(q["source_file"]) == {"generate"} and q["source_row"].min() >= 1


def test_temporary_files_are_never_read_as_parts(tmp_path: Path) -> None:
    data = tmp_path / "d"
    frame = sample_events(20)
    ingest_frame(frame, data, settings())
    folder = storage.partition_dir(data, storage.EVENTS, date(2026, 3, 1))
    (folder / f"{storage.TMP_PREFIX}deadbeef.parquet").write_bytes(b"half a file")
    assert all(not p.name.startswith(storage.TMP_PREFIX)
               for p in storage.partition_files(data, storage.EVENTS, date(2026, 3, 1)))
    again = ingest_frame(frame, data, settings())  # reads stored ids past the junk file
    assert again.rows_written == 0
    assert [p.name for p in data.rglob(f"{storage.TMP_PREFIX}*")] == [f"{storage.TMP_PREFIX}deadbeef.parquet"]


@pytest.mark.integration  # a real subprocess, server or seconds of work
def test_killed_ingest_leaves_whole_parts_and_a_rerun_completes(tmp_path: Path) -> None:
    frame = sample_events(12000, seed=11)
    path = write_all_formats(frame, tmp_path / "in")["csv"]
    data = tmp_path / "d"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "uba-batch"), "ingest", str(path), "--data-dir", str(data),
         "--batch-rows", "1000"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO, start_new_session=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "batch 2 of" in line:
            with contextlib.suppress(ProcessLookupError):  # finished first: the checks still hold
                os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    for part in data.rglob("*.parquet"):
        assert not part.name.startswith(storage.TMP_PREFIX)
        pl.read_parquet(part)  # every finished part is whole
    summary = ingest_files([path], data, settings(batch_rows=1000))
    events = stored(data)
    valid_ids = 12000 - 4
    assert events.height == valid_ids and events["event_id"].n_unique() == valid_ids
    assert summary.rows_written + summary.reasons.get("duplicate event_id", 0) - 1 == valid_ids
    assert not list(data.rglob(f"{storage.TMP_PREFIX}*"))


def test_integral_float_user_id_is_the_same_user_in_every_json_reader(tmp_path: Path) -> None:
    """A JSON exporter writing user_id 123.0 must not split user "123" in two by reader path."""
    event = {"event_id": "f1", "user_id": 123.0, "timestamp": "2026-03-01T10:00:00Z", "event_type": "view",
             "session_duration_sec": 4.0, "events_in_session": 2.0, "device_type": "desktop"}
    array = tmp_path / "a.json"
    array.write_text(json.dumps([event]))
    careful = tmp_path / "c.jsonl"  # a bad line sends the whole batch through the record-by-record path
    careful.write_text(json.dumps({**event, "event_id": "f2"}) + "\n{not json\n")
    fast = tmp_path / "f.jsonl"
    fast.write_text(json.dumps({**event, "event_id": "f3"}) + "\n")
    ingest_files([array, careful, fast], tmp_path / "d", settings())
    events = stored(tmp_path / "d")
    assert events.select("event_id", "user_id").rows() == [("f1", "123"), ("f2", "123"), ("f3", "123")]


def test_an_existing_file_named_with_glob_characters_is_read_as_itself(tmp_path: Path) -> None:
    """Exports named like 'events [1].csv' are files, not patterns that match something else."""
    path = write_all_formats(sample_events(20), tmp_path / "in")["csv"].rename(tmp_path / "events [1].csv")
    summary = ingest_files([str(path)], tmp_path / "d", settings())
    assert summary.rows_read == 20 and summary.files[0].path == str(path)


# ------------------------------------------------------------------ hostile input (hardening)

EVENT_HEADER = "event_id,user_id,timestamp,event_type,session_duration_sec,events_in_session,device_type,session_id"


def _hostile_file(path: Path, field_chars: int) -> None:
    """A quoted field holding a fake event, and a ragged row (a forged-record attempt)."""
    field = "A" * field_chars + "\nx4,someone-else,2026-11-11T03:00:00Z,download,60,3,desktop,sF\nB"
    path.write_text(EVENT_HEADER + "\nx1,u00001,2026-11-11T10:00:00Z,login,60,3,desktop,s1\n"
                    + f'x2,"{field}",2026-11-11T10:00:00Z,login,60,3,desktop,s2\n'
                    + "x3,u00001,2026-11-11T10:00:00Z,login,60,3,desktop,s3,EXTRA\n"
                    + "x4,u00042,2026-11-11T11:00:00Z,login,60,3,desktop,s4\n")


@pytest.mark.parametrize("field_chars", [10, 140_000, 10 * 1024 * 1024])
def test_text_inside_a_quoted_field_never_becomes_an_event(tmp_path: Path, field_chars: int) -> None:
    path = tmp_path / "inj.csv"
    _hostile_file(path, field_chars)
    summary = ingest_files([path], tmp_path / "d", settings())
    assert (summary.rows_read, summary.rows_written, summary.rows_quarantined) == (4, 2, 2)
    assert dict(stored(tmp_path / "d").select("event_id", "user_id").iter_rows()) == {"x1": "u00001", "x4": "u00042"}
    q = stored(tmp_path / "d", storage.QUARANTINE)
    x2 = q.filter(pl.col("event_id") == "x2")
    if field_chars > 65_536:  # one quarantined row naming the field, the value kept cut
        assert x2.item(0, "reason").startswith(f"field 'user_id' is {field_chars + 64} bytes, over ingest.max_field_bytes")
        assert len(x2.item(0, "user_id")) < 300
    else:
        assert x2.item(0, "reason").endswith("' contains control, invisible or format characters, or invalid UTF-8 (the first as UTF-8: 0a)")


def test_max_field_bytes_is_a_setting_and_never_moves_records(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text(EVENT_HEADER + "\n" + "".join(
        f"f{i},{'u' * (200 + i)},2026-03-01T10:00:00Z,view,1,1,desktop,\n" for i in range(120)))
    limits = Settings(ingest=IngestSettings(max_field_bytes=256, max_record_bytes=4096))
    summary = ingest_files([path], tmp_path / "d", limits)
    assert (summary.rows_written, summary.rows_quarantined) == (57, 63)
    q = stored(tmp_path / "d", storage.QUARANTINE)
    assert q["event_id"].to_list() == [f"f{i}" for i in range(57, 120)]
    assert q.item(0, "reason").startswith("field 'user_id' is 257 bytes, over ingest.max_field_bytes (256)")
    with pytest.raises(ValueError, match="max_record_bytes must be at least max_field_bytes"):
        IngestSettings(max_field_bytes=4096, max_record_bytes=2048)


def _random_csv(rng: np.random.Generator, well_formed: bool) -> tuple[bytes, list[int]]:
    """A few records of random fields; for well-formed ones also where each record ends."""
    alphabet = ["a", "b", ",", '"', "\n", "\r", " ", "\u00e9", '""']
    records = []
    for _ in range(int(rng.integers(1, 7))):
        fields = []
        for _ in range(3):
            raw = "".join(rng.choice(alphabet) for _ in range(int(rng.integers(0, 6))))
            if well_formed and any(c in raw for c in ',"\n\r'):
                raw = '"' + raw.replace('"', '""') + '"'
            fields.append(raw)
        records.append(",".join(fields).encode())
    data = b"\n".join(records) + (b"\n" if rng.random() < 0.7 else b"")
    ends = list(np.minimum(np.cumsum([len(r) + 1 for r in records]), len(data)))
    return data, ends


@pytest.mark.integration  # a real subprocess, server or seconds of work
def test_one_definition_of_a_record_whatever_the_read_size_and_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """Record ends match RFC 4180 exactly, do not depend on where reads are cut, and the
    columnar and record-by-record parsers give the same fields for every record."""
    from uba.ingest import files as ingest

    rng = np.random.default_rng(11)
    names = ["x", "y", "z"]
    columnar = 0
    for trial in range(800):
        well_formed = bool(trial % 2)
        data, true_ends = _random_csv(rng, well_formed)
        ends, regular = ingest._record_ends(data, eof=True)
        if well_formed:
            assert ends.tolist() == true_ends, data
        monkeypatch.setattr(ingest, "CSV_READ_BYTES", int(rng.integers(1, 8)))
        runs = list(ingest._csv_runs(io.BytesIO(data), Path("t.csv"), 1 << 20))
        offsets, seen = [], 0
        for chunk, chunk_ends, _ in runs:
            offsets += (chunk_ends + seen).tolist()
            seen += len(chunk)
        assert offsets == ends.tolist(), data
        slow = ingest._csv_rows_slowly(data, ends, names)
        fast = ingest._csv_fast(data, len(ends), names) if regular else None
        if fast is not None:
            columnar += 1
            readable = slow[ingest.READ_ERROR].is_null()
            assert fast.filter(readable).drop(ingest.READ_ERROR).equals(
                slow.filter(readable).drop(ingest.READ_ERROR)), data
    assert columnar > 50


def test_calendar_edges_are_stored_or_quarantined_never_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "edges.csv"
    path.write_text(EVENT_HEADER + "\n"
                    "e1,u1,9999-12-31T23:59:59Z,login,1,1,desktop,\n"
                    "e2,u1,0001-01-01T00:00:00Z,login,1,1,desktop,\n"
                    "e3,u1,9999-12-31T23:59:59-00:01,login,1,1,desktop,\n"
                    "e4,u1,0001-01-01T00:00:00+00:01,login,1,1,desktop,\n")
    summary = ingest_files([path], tmp_path / "d", settings())
    assert (summary.status, summary.rows_written, summary.rows_quarantined) == ("ok", 2, 2)
    assert stored(tmp_path / "d")["event_date"].to_list() == ["9999-12-31", "0001-01-01"]
    reasons = stored(tmp_path / "d", storage.QUARANTINE)["reason"].to_list()
    assert all(r.endswith("is outside 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z in UTC") for r in reasons)


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_json_nested_200k_levels_is_one_quarantined_record(tmp_path: Path, fmt: str) -> None:
    good = json.dumps({"event_id": "d2", "user_id": "u2", "timestamp": "2026-03-01T10:00:00Z", "event_type": "view",
                       "session_duration_sec": 1, "events_in_session": 1, "device_type": "mobile"})
    deep = '{"event_id": "d1", "user_id": ' + "[" * 200_000 + "]" * 200_000 + "}"
    path = tmp_path / f"deep.{fmt}"
    path.write_text(f"{deep}\n{good}\n" if fmt == "jsonl" else f"[{deep},\n{good}]")
    summary = ingest_files([path], tmp_path / "d", settings())
    assert (summary.rows_read, summary.rows_written, summary.rows_quarantined) == (2, 1, 1)
    assert "nested too deeply" in stored(tmp_path / "d", storage.QUARANTINE).item(0, "reason")


def _failing_writes(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    """The ``at``-th Parquet write raises ENOSPC: a fault hook for a disk that fills mid-ingest."""
    real, calls = storage.write_parquet_atomic, [0]

    def write(df: pl.DataFrame, path: Path) -> Path:
        calls[0] += 1
        if calls[0] == at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(df, path)

    monkeypatch.setattr(storage, "write_parquet_atomic", write)


@pytest.mark.parametrize("at", [1, 2])
def test_disk_full_mid_ingest_is_one_line_and_a_failed_summary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    data = tmp_path / "d"
    first = tmp_path / "first.csv"
    first.write_text(EVENT_HEADER + "\np1,u1,2026-03-01T10:00:00Z,login,1,1,desktop,\n")
    ingest_files([first], data, settings())
    before = {p: p.read_bytes() for p in data.rglob("*.parquet")}
    second = tmp_path / "second.csv"  # one valid and one bad row: an events and a quarantine part
    second.write_text(EVENT_HEADER + "\nn1,u1,2026-03-01T11:00:00Z,login,1,1,desktop,\n"
                      "n2,u1,2026-03-01T11:00:00Z,hack,1,1,desktop,\n")
    _failing_writes(monkeypatch, at)
    result = CliRunner().invoke(cli, ["ingest", str(second), "--data-dir", str(data)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.count("\n") == 1 and "No space left on device (ENOSPC)" in result.stderr
    assert {p: p.read_bytes() for p in data.rglob("*.parquet")} == before  # the batch's parts are gone again
    runs = [json.loads(p.read_text()) for p in sorted((data / "ingest_runs").glob("*.json"))]
    assert [r["status"] for r in runs] == ["ok", "failed"]
    assert (runs[1]["rows_read"], runs[1]["parts"]) == (0, []) and "No space left" in runs[1]["error"]


def _can_mount_tmpfs(target: Path) -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(target)], capture_output=True)
    return done.returncode == 0


@pytest.mark.integration  # a real subprocess, server or seconds of work
def test_disk_full_on_a_real_small_tmpfs(tmp_path: Path) -> None:
    """A real filesystem that fills: Polars reports ENOSPC as a ComputeError, still one line."""
    mount = tmp_path / "small"
    mount.mkdir()
    if not _can_mount_tmpfs(mount):
        pytest.skip("needs root and tmpfs mounts")
    try:
        data = mount / "d"
        first = tmp_path / "first.csv"
        first.write_text(EVENT_HEADER + "\np1,u1,2026-03-01T10:00:00Z,login,1,1,desktop,\n")
        assert CliRunner().invoke(cli, ["ingest", str(first), "--data-dir", str(data)]).exit_code == 0
        rng = np.random.default_rng(3)
        big = tmp_path / "big.csv"  # random ids: ~3 MB of Parquet that cannot fit in 600 kB
        big.write_text(EVENT_HEADER + "\n" + "".join(
            f"{rng.bytes(16).hex()},{rng.bytes(16).hex()},2026-03-02T10:00:00Z,login,1,1,desktop,\n"
            for _ in range(60_000)))
        result = CliRunner().invoke(cli, ["ingest", str(big), "--data-dir", str(data)])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "No space left on device" in result.stderr and result.stderr.count("\n") == 1
        assert dict(stored(data).select("event_id", "user_id").iter_rows()) == {"p1": "u1"}
        statuses = sorted(json.loads(p.read_text())["status"] for p in (data / "ingest_runs").glob("*.json"))
        assert statuses == ["failed", "ok"]
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_gzip_that_inflates_without_end_is_stopped(tmp_path: Path) -> None:
    one_line = tmp_path / "bomb.csv.gz"  # 2 GiB in one line from 2 MB
    member = gzip.compress(b"A" * (16 << 20), compresslevel=9)
    one_line.write_bytes(gzip.compress(EVENT_HEADER.encode() + b"\ng1,") + member * 128)
    with pytest.raises(UserError, match=r"bomb.csv.gz: data row 1 is longer than ingest.max_record_bytes"):
        ingest_files([one_line], tmp_path / "d", settings())
    rows = tmp_path / "rows.csv.gz"
    rows.write_bytes(gzip.compress(EVENT_HEADER.encode() + b"\n")
                     + gzip.compress(b"z,u1,2026-03-01T10:00:00Z,login,1,1,desktop,\n" * 50_000) * 2)
    limits = Settings(ingest=IngestSettings(max_decompressed_bytes=1 << 20))
    with pytest.raises(UserError, match=r"rows.csv.gz: decompresses to more than ingest.max_decompressed_bytes"):
        ingest_files([rows], tmp_path / "d", limits)


def test_a_header_of_2m_columns_is_refused_without_quadratic_work(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(2_000_000)) + "\n1\n")
    limits = Settings(ingest=IngestSettings(max_record_bytes=32 << 20))  # so the column limit is what trips
    with pytest.raises(UserError, match=r"wide.csv: the header has 2,000,000 columns, over ingest.max_columns"):
        ingest_files([path], tmp_path / "d", limits)
    names = EVENT_HEADER.split(",") + [f"c{i}" for i in range(1000 - len(EVENT_HEADER.split(",")))]
    path.write_text(",".join(names) + "\n1\n")  # at the limit, and unique: fine
    assert ingest_files([path], tmp_path / "d", limits).rows_read == 1


def test_double_star_glob_enters_each_folder_once(tmp_path: Path) -> None:
    deepest = tmp_path / "a" / "b" / "c"
    deepest.mkdir(parents=True)
    (deepest / "x.csv").write_text(EVENT_HEADER + "\ng1,u1,2026-03-01T10:00:00Z,login,1,1,desktop,\n")
    for folder in (tmp_path, tmp_path / "a", tmp_path / "a" / "b", deepest):
        for name in ("loop1", "loop2"):  # glob.glob follows these into 2**40 paths
            (folder / name).symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "alias").symlink_to(deepest, target_is_directory=True)
    found = storage.expand_inputs([f"{tmp_path}/**/*.csv", str(deepest / "x.csv"), f"{tmp_path}/alias/*.csv"])
    assert found == [deepest / "x.csv"]
    summary = ingest_files([f"{tmp_path}/**/*.csv"], tmp_path / "d", settings())
    assert (summary.rows_read, len(summary.files)) == (1, 1)


# ------------------------------------------------------------------ hardening: typed Parquet,
# JSON array ends, unknown keys, line ends


def _other_event_fields(columns: dict[str, object], rows: int) -> dict[str, object]:
    """``columns`` plus ordinary values for every required event field it lacks: a file
    without them is refused as a whole (check_required_columns), not read."""
    ordinary = _event(0)
    return {**{name: [value] * rows for name, value in ordinary.items() if name not in columns}, **columns}


def _event(i: int, **fields: object) -> dict[str, object]:
    return {"event_id": f"t{i}", "user_id": f"u{i}", "timestamp": "2026-11-11T10:00:00Z", "event_type": "login",
            "session_duration_sec": 60, "events_in_session": 3, "device_type": "desktop", **fields}


def test_typed_parquet_extremes_never_reach_a_polars_formatter(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Datetimes, dates and times past what Polars can print, as event fields and nested in
    lists and structs, and bytes that are not UTF-8: rows quarantined naming field and value,
    no panic (which Rust prints to the process's stderr even when Python catches it), nothing lost."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    extremes = [2**62, -(2**62), 10**16, 1_762_855_200_000]
    n = len(extremes)

    def parquet(name: str, columns: dict[str, pa.Array]) -> Path:
        table = pl.DataFrame([_event(i) for i in range(n)]).to_arrow()
        for column, values in columns.items():
            table = table.set_column(table.column_names.index(column), column, values) \
                if column in table.column_names else table.append_column(column, values)
        pq.write_table(table, tmp_path / name)
        return tmp_path / name

    flat = parquet("flat.parquet", {
        "timestamp": pl.Series(extremes).cast(pl.Datetime("ms")).to_arrow(),
        "event_id": pa.array([b"\xff1", b"t1", b"t2", b"t3"], type=pa.binary()),
    })
    nested = parquet("nested.parquet", {
        "session_id": pl.Series([[v] for v in extremes]).cast(pl.List(pl.Datetime("us"))).to_arrow(),
        "hour_of_day": pl.Series([{"t": v} for v in extremes]).cast(pl.Struct({"t": pl.Datetime("ms")})).to_arrow(),
        "day_of_week": pl.Series([2**31 - 1, -(2**31), 5, None], dtype=pl.Int32).cast(pl.Date).to_arrow(),
        "event_id": pa.array([f"n{i}" for i in range(n)]),
    })

    summary = ingest_files([flat, nested], tmp_path / "d", settings())

    assert (summary.rows_read, summary.rows_written, summary.rows_quarantined) == (2 * n, 1, 2 * n - 1)
    captured = capfd.readouterr()
    assert "panicked" not in captured.err and "Traceback" not in captured.err
    quarantine = stored(tmp_path / "d", storage.QUARANTINE)
    reasons = quarantine.filter(pl.col("source_file") == str(flat))["reason"].to_list()
    assert [r.split(" contains ")[0].split(" is not ")[0] for r in reasons] == [
        "event_id: '?1'", "timestamp: '-4611686018427387904 ms since 1970-01-01T00:00:00Z'",
        "timestamp: '10000000000000000 ms since 1970-01-01T00:00:00Z'"]
    assert set(quarantine.filter(pl.col("source_file") == str(nested))["reason"]) == {
        "session_id: must be a string or an integer, not an array (a Parquet large_list<element: timestamp[us]>; "
        "its values were not read)"}


def test_a_duration_event_field_is_one_line_naming_file_column_and_type(tmp_path: Path) -> None:
    good = tmp_path / "a.csv"
    good.write_text(HEADER + "\ng1,u1,2026-11-11T10:00:00Z,login,60,3,desktop,,,\n")
    bad = tmp_path / "b.parquet"
    pl.DataFrame([_event(1)]).with_columns(pl.duration(seconds=60).alias("session_duration_sec")).write_parquet(bad)
    data = tmp_path / "d"
    with pytest.raises(UserError, match=r"b\.parquet: column 'session_duration_sec' has type Duration") as caught:
        ingest_files([good, bad], data, settings())
    assert "\n" not in str(caught.value)
    (run,) = [json.loads(p.read_text()) for p in (data / "ingest_runs").glob("*.json")]
    assert (run["status"], run["rows_read"], run["rows_written"]) == ("failed", 1, 1)
    with pytest.raises(UserError, match="column 'timestamp' has type Duration"):
        ingest_frame(pl.DataFrame([_event(2)]).with_columns(pl.duration(days=1).alias("timestamp")), data, settings())


@pytest.mark.parametrize(("tail", "offset"), [("[{second}]", 0), ("  junk", 2), ("\n{second}", 1)])
def test_anything_after_the_json_array_refuses_the_file_naming_the_byte(tmp_path: Path, tail: str, offset: int) -> None:
    first = json.dumps(_event(1))
    path = tmp_path / "two.json"
    path.write_text(f"[{first}]" + tail.format(second=json.dumps(_event(2, user_id="forged"))))
    data = tmp_path / "d"
    with pytest.raises(UserError, match=f"at byte {len(first) + 2 + offset:,}"):
        ingest_files([path], data, settings())
    assert stored(data).height == 0  # the one batch of the file is refused whole, nothing forged


def test_unknown_json_keys_never_become_columns(tmp_path: Path) -> None:
    """250,000 lines with a key each took 6.2 GB (a column per key, rows x keys null cells)."""
    from uba.ingest.files import MAX_IGNORED_NAMES, read_batches
    from uba.ingest.validate import META_FIELDS
    from uba.schema import RAW_FIELDS

    path = tmp_path / "keys.jsonl"
    path.write_text("".join(json.dumps({**_event(i), f"x{i}": i, "source_row": -1}) + "\n" for i in range(3000)))
    noted: list[tuple[list[str], bool]] = []
    frames = list(read_batches(path, "jsonl", 1000, IngestSettings(batch_rows=1000),
                               lambda names, more: noted.append((names, more))))
    assert [f.height for f in frames] == [1000, 1000, 1000]
    assert all(set(f.columns) <= set(RAW_FIELDS) | set(META_FIELDS) for f in frames)
    assert frames[0]["source_row"].to_list()[:2] == [1, 2]  # a key named like reader metadata is ignored too
    assert all(len(names) == MAX_IGNORED_NAMES and more for names, more in noted)
    summary = ingest_files([path], tmp_path / "d", settings(batch_rows=1000))
    item = summary.files[0]
    assert (summary.rows_written, len(item.ignored_columns), item.ignored_columns_truncated) == (3000, 100, True)
    assert item.ignored_columns[:2] == ["x0", "source_row"]


def _peak_rss_mb(path: Path, data: Path) -> float:
    script = ("import resource, sys\nfrom uba.ingest.files import ingest_files\nfrom uba.settings import Settings\n"
              "s = ingest_files([sys.argv[1]], sys.argv[2], Settings())\nassert s.rows_written == s.rows_read\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    done = subprocess.run([sys.executable, "-c", script, str(path), str(data)], capture_output=True, text=True,
                          timeout=300, check=True)
    return float(done.stdout.split()[-1])


@pytest.mark.integration  # a real subprocess, server or seconds of work
def test_memory_of_a_file_of_new_keys_stays_that_of_the_same_file_without_them(tmp_path: Path) -> None:
    """Peak RSS of 60,000 lines each with a key of its own, against the same lines without
    (a ratio in the same run, not an absolute number: the machine is shared)."""
    keyed, plain = tmp_path / "keyed.jsonl", tmp_path / "plain.jsonl"
    keyed.write_text("".join(json.dumps({**_event(i), f"extra_key_{i}": i}) + "\n" for i in range(60_000)))
    plain.write_text("".join(json.dumps(_event(i)) + "\n" for i in range(60_000)))
    ratio = _peak_rss_mb(keyed, tmp_path / "d1") / _peak_rss_mb(plain, tmp_path / "d2")
    assert ratio < 1.5, ratio  # a column per key: about x5 here, and rows x keys in general


def test_jsonl_line_ends_and_bom_are_read_like_csv(tmp_path: Path) -> None:
    """\\n and \\r\\n end a line; a BOM is dropped; blank lines (also \\r alone) are skipped."""
    lines = [json.dumps(_event(i)) for i in range(5)]
    path = tmp_path / "ends.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + f"{lines[0]}\r\n{lines[1]}\n\r\n{lines[2]}\r\r\n{lines[3]}\n\n{lines[4]}"
                     .encode())
    summary = ingest_files([path], tmp_path / "d", settings())
    assert (summary.rows_read, summary.rows_written) == (5, 5)


def _forging_jsonl(tmp_path: Path, name: str) -> Path:
    """A raw CR inside a string of line 2 holding a whole event of its own."""
    forged = json.dumps(_event(99, user_id="someone-else"))
    line2 = json.dumps(_event(2, note="@")).replace('"@"', '"\r' + forged + '\r"')
    body = "\n".join([json.dumps(_event(1)), line2, json.dumps(_event(3))]) + "\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(body.encode()) if name.endswith(".gz") else body.encode())
    return path


@pytest.mark.parametrize("name", ["cr.jsonl", "cr.jsonl.gz"])
def test_jsonl_raw_cr_inside_a_string_never_splits_a_line(tmp_path: Path, name: str) -> None:
    summary = ingest_files([_forging_jsonl(tmp_path, name)], tmp_path / "d", settings())
    assert (summary.rows_read, summary.rows_written, summary.rows_quarantined) == (3, 2, 1)
    stored = pl.read_parquet(tmp_path / "d" / "events" / "*" / "*.parquet")
    assert sorted(stored["event_id"]) == ["t1", "t3"] and "someone-else" not in stored["user_id"].to_list()
    (reason,) = pl.read_parquet(tmp_path / "d" / "quarantine" / "*" / "*.parquet")["reason"].to_list()
    assert "raw control character '\\r' inside a string" in reason and '"t2"' in reason


def test_jsonl_cr_whitespace_between_tokens_is_one_record(tmp_path: Path) -> None:
    """RFC 8259 whitespace includes CR: such a line is one event, as in the API and .json arrays."""
    path = tmp_path / "ws.jsonl"
    path.write_bytes((json.dumps(_event(1)).replace(', "user_id"', ',\r"user_id"').replace("{", "{\r") + "\r\n"
                      + json.dumps(_event(2)).replace(", ", ",\r") + "\n").encode())
    summary = ingest_files([path], tmp_path / "d", settings())
    assert (summary.rows_read, summary.rows_written) == (2, 2)


def test_jsonl_cr_only_line_ends_are_refused_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "mac.jsonl"
    path.write_bytes("\r".join(json.dumps(_event(i)) for i in range(3)).encode() + b"\r")
    with pytest.raises(UserError, match=r"no \\n line end but holds \\r") as caught:
        ingest_files([path], tmp_path / "d", settings())
    assert "\n" not in str(caught.value)
    (run,) = [json.loads(p.read_text()) for p in (tmp_path / "d" / "ingest_runs").glob("*.json")]
    assert (run["status"], run["rows_read"]) == ("failed", 0)


def test_jsonl_cr_split_across_read_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A \\r\\n cut between two reads is one line end, not a line end and a blank line."""
    import uba.ingest.files as ingest_module

    monkeypatch.setattr(ingest_module, "CSV_READ_BYTES", 7)
    lines = [json.dumps(_event(i)) for i in range(40)]
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r")
    with open(path, "rb") as handle:
        numbered = list(ingest_module._bounded_lines(handle, path, 1 << 20))
    assert [n for n, _ in numbered] == list(range(1, 41))
    assert [json.loads(line)["event_id"] for _, line in numbered] == [f"t{i}" for i in range(40)]


@pytest.mark.integration  # a real subprocess, server or seconds of work
def test_concurrent_ingests_of_the_same_file_store_each_event_once(tmp_path: Path) -> None:
    """Two real `uba-batch ingest` processes of one file: the duplicate check and the write of
    a day happen under that day's lock, so the second sees the first one's rows as stored
    (it used to store 2 x n rows for n ids)."""
    n = 30_000
    path = tmp_path / "mid.csv"
    path.write_text("event_id,user_id,timestamp,event_type,session_duration_sec,events_in_session,device_type\n"
                    + "".join(f"c{i},u{i % 50},2026-11-11T{i % 24:02d}:00:00Z,view,5,2,desktop\n" for i in range(n)))
    data = tmp_path / "d"
    command = [str(Path(sys.executable).parent / "uba-batch"), "ingest", str(path), "--data-dir", str(data),
               "--batch-rows", "1000", "--json"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(2)]
    outs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-2000:] for _, err in outs]
    runs = [json.loads(out) for out, _ in outs]
    events = stored(data)
    assert events.height == n and events["event_id"].n_unique() == n
    assert sum(run["rows_written"] for run in runs) == n
    assert sum(run["reasons"].get("duplicate event_id", 0) for run in runs) == n
    quarantined = stored(data, storage.QUARANTINE)
    assert quarantined.height == n and set(quarantined["reason"].str.contains("already stored")) == {True}


def _dictionary_bomb(path: Path, rows: int, value_bytes: int = 60_000) -> None:
    """A zstd Parquet file whose user_id is one ``value_bytes``-character dictionary value on
    every row: the footer's uncompressed size is the encoded one (indices), not the decoded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    events = [_event(0)] * rows
    table = pa.Table.from_pylist(events).set_column(
        1, "user_id", pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["x" * value_bytes])))
    table = table.set_column(0, "event_id", pa.array([f"k{i}" for i in range(rows)]))
    pq.write_table(table, path, compression="zstd")


def _cli_peak_rss_mb(path: Path, data: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Peak RSS (MB) of a real ``uba-batch ingest`` of ``path``, measured by a fresh parent."""
    script = ("import resource, subprocess, sys\n"
              "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
              "sys.stderr.write(done.stderr)\nprint(done.returncode, done.stdout.count(chr(10)))\n"
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    command = [str(Path(sys.executable).parent / "uba-batch"), "ingest", str(path), "--data-dir", str(data), "--json"]
    done = subprocess.run([sys.executable, "-c", script, *command], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    return float(done.stdout.split()[-1]), done


@pytest.mark.integration  # a real subprocess, server or seconds of work
def test_parquet_dictionary_values_are_bounded_by_their_decoded_size(tmp_path: Path) -> None:
    """A 51 KB file of one 60,000-character dictionary user_id on 20,000 rows decodes to 1.2 GB
    (it took 2.9 GB RSS): read in slices of bounded decoded size, every row quarantined; the
    same value on 2,000,000 rows (1.3 MB, 120 GB decoded; past 3 GB RSS in seconds) is refused
    before decoding, naming file, row group, column and limit. Peak RSS stays a few hundred MB."""
    small, big = tmp_path / "small.parquet", tmp_path / "big.parquet"
    _dictionary_bomb(small, 20_000)
    _dictionary_bomb(big, 2_000_000)
    assert small.stat().st_size < 100_000 and big.stat().st_size < 2_000_000
    peak, done = _cli_peak_rss_mb(small, tmp_path / "d1")
    assert done.stdout.split()[0] == "2", done.stderr[-2000:]  # stored what it could; all quarantined
    (run,) = [json.loads(p.read_text()) for p in (tmp_path / "d1" / "ingest_runs").glob("*.json")]
    assert (run["status"], run["rows_read"], run["rows_written"], run["rows_quarantined"]) == ("ok", 20_000, 0, 20_000)
    assert peak < 600, peak
    peak, done = _cli_peak_rss_mb(big, tmp_path / "d2")
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.stdout.split()[0] == "1" and "Traceback" not in done.stderr
    assert f"{big}: row group 1 of 2 (rows 1-250,000) decodes to" in line and "column 'user_id'" in line
    assert "ingest.max_decompressed_bytes (4,294,967,296 bytes)" in line
    (run,) = [json.loads(p.read_text()) for p in (tmp_path / "d2" / "ingest_runs").glob("*.json")]
    assert run["status"] == "failed"
    assert peak < 600, peak


def test_parquet_row_groups_are_checked_from_the_footer_one_at_a_time(tmp_path: Path) -> None:
    """Row groups are read one at a time; one decompressing past the limits is refused before it
    is inflated, with one line naming file, row group and limit, and the groups before it stay stored."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [_event(i) for i in range(3000)]
    rows[2500]["user_id"] = "x" * 3_000_000
    table = pa.Table.from_pylist(rows)
    path = tmp_path / "groups.parquet"
    pq.write_table(table, path, row_group_size=1000, compression="zstd")
    config = Settings(ingest=IngestSettings(batch_rows=1000, max_field_bytes=1024, max_record_bytes=1 << 20))
    with pytest.raises(UserError, match=r"row group 3 of 3: column 'user_id' decompresses to .* over "
                                        r"ingest.max_field_bytes \(1,024\) per value") as caught:
        ingest_files([path], tmp_path / "d", config)
    assert "\n" not in str(caught.value)
    (run,) = [json.loads(p.read_text()) for p in (tmp_path / "d" / "ingest_runs").glob("*.json")]
    assert (run["status"], run["rows_read"], run["rows_written"]) == ("failed", 2000, 2000)
    assert stored(tmp_path / "d").height == 2000


def test_an_ingest_behind_a_held_lock_says_so_and_gives_up_after_the_timeout(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: a blocking flock with no timeout, silent: an ingest behind a stopped one waited forever."""
    import fcntl

    data = tmp_path / "data"
    source = tmp_path / "a.csv"
    source.write_text(HEADER + "\nl1,u1,2026-03-04T08:00:00Z,login,5,1,desktop,,,\n")
    lock = storage.checksum_folder(storage.partition_dir(data, storage.EVENTS, "2026-03-04")) / ".ingest.lock"
    lock.parent.mkdir(parents=True)
    held = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(held, fcntl.LOCK_EX)  # a stopped ingest holding the day
    try:
        configured = Settings(ingest=IngestSettings(lock_timeout_sec=0.5))
        with pytest.raises(UserError) as caught:
            ingest_files([source], data, configured)
    finally:
        os.close(held)
    message = str(caught.value)
    assert "\n" not in message and str(lock) in message and "0.5s" in message
    waits = [r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage()]
    assert len(waits) == 1 and str(lock) in waits[0]
    (record,) = (data / storage.INGEST_RUNS).glob("*.json")
    summary = json.loads(record.read_text())
    assert summary["status"] == "failed" and str(lock) in summary["error"] and summary["rows_written"] == 0
    assert IngestSettings().lock_timeout_sec == 600
    ingest_files([source], data, settings())  # once released, the next ingest goes straight through
    assert stored(data).height == 1


@pytest.mark.parametrize("kind", ["string_view", "binary_view", "fixed_size_binary"])
def test_view_and_fixed_size_binary_parquet_columns_decode_in_bounded_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Before: these columns were not read as dictionaries, so neither the decoded-size count
    nor the slicing saw them: a 138 KB file of one 60,000-byte value on 20,000 rows decoded
    1.2 GB in one batch (3.9-4.0 GB RSS). Here with 1 MB blocks: no frame holds much more."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from uba.ingest import files as ingest
    from uba.settings import IngestSettings

    rows, size = 120, 60_000
    monkeypatch.setattr(ingest, "PARQUET_BLOCK_BYTES", 1 << 20)
    value = b"x" * size
    column = (pa.array([value] * rows, pa.binary(size)) if kind == "fixed_size_binary"
              else pa.array([value] * rows, pa.binary()).cast(getattr(pa, kind)()))
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table(_other_event_fields({"event_id": [f"e{i}" for i in range(rows)], "user_id": column},
                                                rows)), path)
    frames = list(ingest.read_batches(path, "parquet", 250_000, IngestSettings()))
    assert sum(frame.height for frame in frames) == rows
    biggest = max(frame.select(pl.col("user_id").cast(pl.Binary).bin.size()).sum().item() for frame in frames)
    assert biggest <= (1 << 20) + size


def test_a_fixed_size_binary_column_wider_than_the_field_limit_is_not_read(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from uba.ingest.files import read_batches
    from uba.settings import IngestSettings

    path = tmp_path / "wider.parquet"
    columns = {"event_id": ["e1", "e2"], "user_id": pa.array([b"y" * 70_000] * 2, pa.binary(70_000))}
    pq.write_table(pa.table(_other_event_fields(columns, 2)), path)
    (frame,) = read_batches(path, "parquet", 1000, IngestSettings())
    assert frame["user_id"].to_list() == [None, None]
    assert frame["read_error"].to_list() == [
        "field 'user_id' is a Parquet fixed_size_binary column of 70,000 bytes per value, over "
        "ingest.max_field_bytes (65,536); its values were not read"] * 2


def test_a_parquet_file_of_many_tiny_row_groups_is_read_in_few_batches(tmp_path: Path) -> None:
    """Before: one batch (and one stored part, with a manifest rewrite) per row group: a 4 MB
    file of 3,000 one-row row groups wrote 3,000 parts and took minutes."""
    import pyarrow.parquet as pq

    from uba.ingest.files import read_batches
    from uba.settings import IngestSettings

    rows = 300
    frame = pl.DataFrame(_other_event_fields({"event_id": [f"e{i}" for i in range(rows)], "user_id": ["u1"] * rows},
                                             rows))
    path = tmp_path / "groups.parquet"
    pq.write_table(frame.to_arrow(), path, row_group_size=1)
    assert pq.ParquetFile(path).metadata.num_row_groups == rows
    batches = list(read_batches(path, "parquet", 1000, IngestSettings(batch_rows=1000)))
    assert [batch.height for batch in batches] == [rows]
    assert batches[0]["source_row"].to_list() == list(range(1, rows + 1))
    assert list(read_batches(path, "parquet", 1000, IngestSettings(batch_rows=1000)))[0]["event_id"].to_list() == \
        frame["event_id"].to_list()


def test_many_small_files_are_stored_in_few_parts_with_per_file_counts(tmp_path: Path) -> None:
    """Before: every file was its own batch, part and manifest rewrite (1,000 one-row files:
    1,000 parts, 108 s). Batches of different files with the same columns are joined; each
    file's summary still counts its own rows; a file refused later does not lose the rows read
    before it."""
    header = "event_id,user_id,timestamp,event_type,session_duration_sec,events_in_session,device_type\n"
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(120):
        bad = "" if i % 10 else f"x{i},u1,2026-03-04T09:00:00Z,login,5,1,tablet\n"
        (inputs / f"f{i:03d}.csv").write_text(header + f"e{i},u1,2026-03-04T08:00:00Z,login,5,1,desktop\n" + bad)
    summary = ingest_files([str(inputs / "*.csv")], tmp_path / "d", settings())
    assert (summary.rows_read, summary.rows_written, summary.rows_quarantined) == (132, 120, 12)
    assert len(storage.partition_files(tmp_path / "d", storage.EVENTS, "2026-03-04")) == 1
    counts = {Path(f.path).name: (f.rows_read, f.rows_written, f.rows_quarantined) for f in summary.files}
    assert counts["f000.csv"] == (2, 1, 1) and counts["f001.csv"] == (1, 1, 0) and len(counts) == 120

    (inputs / "f120.csv").write_text("a," * 5000 + "b\n")  # refused: more columns than ingest.max_columns
    with pytest.raises(UserError, match="f120.csv: the header has 5,001 columns"):
        ingest_files([str(inputs / "f1[01]*.csv"), str(inputs / "f120.csv")], tmp_path / "d2", settings())
    (run,) = [json.loads(p.read_text()) for p in (tmp_path / "d2" / "ingest_runs").glob("*.json")]
    assert (run["status"], run["rows_read"], run["rows_written"]) == ("failed", 22, 20)
    assert stored(tmp_path / "d2").height == 20


def test_a_lock_file_that_cannot_be_opened_is_one_line_and_a_failed_summary(tmp_path: Path) -> None:
    """Before: a folder in the place of a day's ingest lock file (or a lock without permission)
    was an IsADirectoryError traceback, and no summary was written."""
    data = tmp_path / "data"
    source = tmp_path / "a.csv"
    source.write_text(HEADER + "\nl1,u1,2026-03-04T08:00:00Z,login,5,1,desktop,,,\n")
    lock = storage.checksum_folder(storage.partition_dir(data, storage.EVENTS, "2026-03-04")) / ".ingest.lock"
    lock.mkdir(parents=True)
    result = CliRunner().invoke(cli, ["ingest", str(source), "--data-dir", str(data)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"error: cannot open the lock file {lock}: Is a directory")
    (run,) = [json.loads(p.read_text()) for p in (data / "ingest_runs").glob("*.json")]
    assert (run["status"], run["rows_read"]) == ("failed", 0)


# ------------------------------------------------------------------ exit codes that tell the truth


def _ingest_cli(tmp_path: Path, name: str, body: bytes) -> subprocess.CompletedProcess[str]:
    path = tmp_path / name
    path.write_bytes(body)
    return subprocess.run([str(Path(sys.executable).parent / "uba-batch"), "ingest", str(path), "--data-dir",
                           str(tmp_path / "d"), "--json"], capture_output=True, text=True, timeout=120, cwd=REPO)


FULL_HEADER = "event_id,user_id,timestamp,event_type,session_duration_sec,events_in_session,device_type\n"
GOOD_ROW = "e1,u1,2026-11-11T10:00:00Z,login,60,3,desktop\n"


@pytest.mark.integration  # a real subprocess, server or seconds of work
@pytest.mark.parametrize(("name", "body", "code", "wanted"), [
    ("empty.csv", b"", 0, "empty.csv: no data rows"),
    ("header-only.csv", FULL_HEADER.encode(), 0, "header-only.csv: no data rows"),
    ("other-columns.csv", b"foo,bar\n1,2\n3,4\n", 1,
     "missing required columns event_id, user_id, timestamp, event_type, session_duration_sec, "
     "events_in_session, device_type; found: foo, bar; expected: event_id"),
    ("userid.csv", (FULL_HEADER.replace("user_id", "userid") + GOOD_ROW).encode(), 1,
     "missing required column user_id (did you mean 'userid' for user_id?); found: event_id, userid,"),
    ("User_ID.parquet", None, 1, "did you mean 'User_ID' for user_id?"),
    ("random.csv", bytes(random.Random(3).randrange(256) for _ in range(100)), 1,
     "missing required columns event_id, user_id"),
    ("mostly-bad.csv", (FULL_HEADER + GOOD_ROW + "e2,u1,not-a-time,login,60,3,desktop\n"
                        "e3,u1,nope,login,60,3,desktop\n").encode(), 2,
     "2 of 3 rows (67%) were quarantined, over ingest.max_quarantine_ratio (0.5); the valid rows are stored"),
])
def test_ingest_exit_codes_and_messages(tmp_path: Path, name: str, body: bytes | None, code: int,
                                        wanted: str) -> None:
    """Before: all of these printed `ok` and exited 0 (the random bytes below excepted)."""
    if body is None:  # a Parquet export whose id column is spelled differently
        frame = pl.DataFrame([_event(1)]).rename({"user_id": "User_ID"})
        frame.write_parquet(tmp_path / "src.parquet")
        body = (tmp_path / "src.parquet").read_bytes()
    done = _ingest_cli(tmp_path, name, body)
    assert done.returncode == code, done.stderr[-2000:]
    assert wanted in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    (run,) = [json.loads(p.read_text()) for p in (tmp_path / "d" / "ingest_runs").glob("*.json")]
    if code == 1:  # refused: nothing of the file stored, a failed summary naming why
        assert run["status"] == "failed" and run["rows_written"] == 0 and wanted.split(";")[0] in run["error"]
        assert not (tmp_path / "d" / "events").exists()
    else:  # stored what it could; the summary (printed and kept) says what happened
        assert run["status"] == "ok" and json.loads(done.stdout) == run
    if code == 0:
        assert run["warnings"] == [f"{tmp_path / name}: no data rows"]
    if code == 2:
        assert (run["rows_read"], run["rows_written"], run["rows_quarantined"]) == (3, 1, 2)


@pytest.mark.integration  # a real subprocess, server or seconds of work
def test_a_retried_delivery_exits_as_the_first_run_did(tmp_path: Path) -> None:
    """Rows refused as already stored do not count towards ingest.max_quarantine_ratio."""
    body = (FULL_HEADER + GOOD_ROW + "e2,u2,2026-11-11T11:00:00Z,login,60,3,desktop\n").encode()
    assert _ingest_cli(tmp_path, "a.csv", body).returncode == 0
    again = _ingest_cli(tmp_path, "a.csv", body)
    assert again.returncode == 0 and json.loads(again.stdout)["reasons"] == {"duplicate event_id": 2}


def test_the_empty_row_reason_is_only_for_empty_rows(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    path.write_text('{"foo": 1, "bar": 2}\n{}\n' + json.dumps(_event(3)) + "\n")
    ingest_files([path], tmp_path / "d", settings())
    reasons = dict(stored(tmp_path / "d", storage.QUARANTINE).select("source_row", "reason").iter_rows())
    assert reasons == {1: "line has no event field, only foo, bar", 2: "empty row (no values)"}


# ------------------------------------------------------------------ a Windows-1252 export

def _windows_1252_export(rows: int) -> tuple[bytes, dict[str, bytes]]:
    """A CSV as a spreadsheet on Windows saves it: cp1252 text, CRLF line ends, a quoted
    comment column (ignored) holding a line break. Bad rows: a name with an accent in
    user_id, event_type and session_id, far into the file; a row whose only accent is
    in the ignored comment. Returns the bytes and, per bad event id, the byte it holds."""
    header = HEADER + ",comment"
    lines = [f"e{i},u{i},2026-03-01T10:{i % 60:02d}:00Z,login,5,2,desktop,,,s{i},\"two\r\nlines\"" for i in range(rows)]
    bad = {"e1500": "e1500,jos\u00e9,2026-03-01T10:00:00Z,login,5,2,desktop,,,s1,",
           "e2100": "e2100,u2100,2026-03-01T10:00:00Z,l\u00f6gin,5,2,desktop,,,s2,",
           "e2600": "e2600,u2600,2026-03-01T10:00:00Z,view,5,2,mobile,,,s\u00e9,ok"}
    for event_id, line in bad.items():
        lines[int(event_id[1:])] = line
    lines[2300] = "e2300,u2300,2026-03-01T10:00:00Z,view,5,2,mobile,,,s3,caf\u00e9 \u201cnote\u201d"
    text = "\r\n".join([header, *lines]) + "\r\n"
    return text.encode("cp1252"), {k: "\u00e9\u00f6\u00e9"[i].encode("cp1252") for i, k in enumerate(bad)}


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_a_windows_1252_csv_quarantines_its_accented_rows_naming_line_byte_and_cure(tmp_path: Path,
                                                                                    suffix: str) -> None:
    """A Latin-1 / Windows-1252 export was quarantined row by row as "contains control,
    invisible or format characters, or invalid UTF-8" (or as an unknown category): nothing
    said where, or that the file only needs saving as UTF-8, as `users import` and
    `feedback` say (io.not_utf8_error). Now each such row's reason names its field, the
    line and byte of the file (of the decompressed text for .gz) and the cure; rows whose
    only such byte is in an ignored column are stored; every row is accounted for."""
    raw, bad = _windows_1252_export(3000)
    path = tmp_path / f"export{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else raw)
    data = tmp_path / "d"
    result = CliRunner().invoke(cli, ["ingest", str(path), "--data-dir", str(data), "--batch-rows", "1000", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["rows_read"], summary["rows_written"], summary["rows_quarantined"]) == (3000, 2997, 3)
    quarantined = stored(data, storage.QUARANTINE)
    reasons = dict(zip(quarantined["event_id"], quarantined["reason"], strict=True))
    fields = {"e1500": "user_id: 'jos?'", "e2100": "event_type: 'l?gin'", "e2600": "session_id: 's?'"}
    for event_id, byte in bad.items():
        offset = raw.index(f"\n{event_id},".encode()) + 1
        offset = raw.index(byte, offset)
        line = raw.count(b"\n", 0, offset) + 1  # the quoted line breaks count: not source_row + 1
        assert reasons[event_id] == (
            f"{fields[event_id]} holds bytes that are not UTF-8 (shown as ?): line {line} holds the byte "
            f"0x{byte[0]:02x} (byte offset {offset} of the file), which is not valid UTF-8; save the file as "
            "UTF-8 (a spreadsheet's \"CSV UTF-8\" format) and try again"), reasons[event_id]
    assert summary["reasons"] == {"invalid characters": 3}
    assert "e2300" in set(stored(data)["event_id"])  # its accent is in the ignored comment column


def test_a_replacement_character_written_in_utf8_keeps_its_reason(tmp_path: Path) -> None:
    """U+FFFD typed into a UTF-8 file is a character, not a byte of another encoding:
    no line-and-byte note, no advice to convert the file."""
    path = tmp_path / "e.csv"
    path.write_text(HEADER + "\ne1,u\ufffd1,2026-03-01T10:00:00Z,login,5,2,desktop,,,\n", encoding="utf-8")
    summary = ingest_files([path], tmp_path / "d", settings(batch_rows=1000))
    assert summary.rows_quarantined == 1
    (reason,) = stored(tmp_path / "d", storage.QUARANTINE)["reason"]
    assert reason == ("user_id: 'u?1' contains control, invisible or format characters, or invalid UTF-8 "
                      "(the first as UTF-8: efbfbd)"), reason
