"""validate_events: one test per reason family, timestamp forms, typed input, duplicates."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from uba.event_rules import MSG_TS_INVALID, MSG_TS_RANGE, MSG_TS_SYNTAX
from uba.ingest.validate import REASON_KINDS, REJECTED_COLUMNS, event_dates, validate_events
from uba.schema import EVENT_SCHEMA, RAW_FIELDS
from uba.settings import EventSettings

GOOD: dict[str, str | None] = {
    "event_id": "e1",
    "user_id": "u1",
    "timestamp": "2026-03-01T14:05:00Z",  # a Sunday: day_of_week 6
    "event_type": "login",
    "session_duration_sec": "30",
    "events_in_session": "3",
    "device_type": "desktop",
    "hour_of_day": None,
    "day_of_week": None,
    "session_id": None,
}


def rows_frame(rows: list[dict[str, Any]]) -> pl.LazyFrame:
    full = [{**GOOD, **row} for row in rows]
    frame = pl.DataFrame(full, schema={name: pl.String for name in RAW_FIELDS})
    return frame.with_columns(
        pl.int_range(1, len(full) + 1, dtype=pl.Int64).alias("source_row"),
        pl.lit("test.csv").alias("source_file"),
    ).lazy()


def split(raw: pl.LazyFrame, events: EventSettings | None = None,
          existing: pl.LazyFrame | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    valid, rejected = validate_events(raw, events or EventSettings(), existing)
    return tuple(pl.collect_all([valid, rejected]))  # type: ignore[return-value]


# (overrides, exact reason, kind): every reason family of the validator.
REASONS = [
    ({"event_id": None}, "missing field: event_id", "missing field"),
    ({"user_id": ""}, "missing field: user_id", "missing field"),
    ({"device_type": "   "}, "missing field: device_type", "missing field"),
    ({k: None for k in RAW_FIELDS}, "empty row (no values)", "missing field"),
    ({"event_id": "x" * 257}, "event_id: longer than 256 characters", "oversized string"),
    ({"user_id": "u" * 300}, "user_id: longer than 256 characters", "oversized string"),
    ({"session_id": "s" * 257}, "session_id: longer than 256 characters", "oversized string"),
    ({"user_id": "u\x001"}, "user_id: 'u?1' contains control, invisible or format characters, or invalid UTF-8 (the first as UTF-8: 00)", "invalid characters"),
    ({"event_id": "e\ufffd"}, "event_id: 'e?' contains control, invisible or format characters, or invalid UTF-8 (the first as UTF-8: efbfbd)", "invalid characters"),
    ({"user_id": "\ufeffu1"}, "user_id: '?u1' contains control, invisible or format characters, or invalid UTF-8 (the first as UTF-8: efbbbf)", "invalid characters"),
    ({"user_id": "u\u20281"}, "user_id: 'u?1' contains control, invisible or format characters, or invalid UTF-8 (the first as UTF-8: e280a8)", "invalid characters"),
    ({"user_id": "u\u20291"}, "user_id: 'u?1' contains control, invisible or format characters, or invalid UTF-8 (the first as UTF-8: e280a9)", "invalid characters"),
    ({"user_id": "ad\u200bmin"}, "user_id: 'ad?min' contains control, invisible or format characters, or invalid UTF-8 (the first as UTF-8: e2808b)", "invalid characters"),
    ({"user_id": "u1\u202e"}, "user_id: 'u1?' contains control, invisible or format characters, or invalid UTF-8 (the first as UTF-8: e280ae)", "invalid characters"),
    ({"user_id": "u\U000e0041"}, "user_id: 'u?' contains control, invisible or format characters, or invalid UTF-8 (the first as UTF-8: f3a08181)", "invalid characters"),
    ({"timestamp": "yesterday"}, f"timestamp: 'yesterday' {MSG_TS_SYNTAX}", "bad timestamp"),
    ({"timestamp": "2026-03-01"}, f"timestamp: '2026-03-01' {MSG_TS_SYNTAX}", "bad timestamp"),
    ({"timestamp": "1740830400"}, f"timestamp: '1740830400' {MSG_TS_SYNTAX}", "bad timestamp"),
    ({"timestamp": "2026-W09-7T14:05:00"}, f"timestamp: '2026-W09-7T14:05:00' {MSG_TS_SYNTAX}", "bad timestamp"),
    ({"timestamp": "2026-03-01T14:05:00\x00"}, f"timestamp: '2026-03-01T14:05:00\x00' {MSG_TS_SYNTAX}",
     "bad timestamp"),
    ({"timestamp": "2026-03-01T14:05"}, f"timestamp: '2026-03-01T14:05' {MSG_TS_SYNTAX}", "bad timestamp"),
    ({"timestamp": "2026-03-01T14:05:00+0530"}, f"timestamp: '2026-03-01T14:05:00+0530' {MSG_TS_SYNTAX}",
     "bad timestamp"),
    ({"timestamp": "2026-03-01T14:05:00.1234567890Z"},
     f"timestamp: '2026-03-01T14:05:00.1234567890Z' {MSG_TS_SYNTAX}", "bad timestamp"),
    ({"timestamp": "2026-03-01T23:59:60Z"}, f"timestamp: '2026-03-01T23:59:60Z' {MSG_TS_INVALID}",
     "bad timestamp"),
    ({"timestamp": "9999-12-31T23:59:59-00:01"}, f"timestamp: '9999-12-31T23:59:59-00:01' {MSG_TS_RANGE}",
     "bad timestamp"),
    ({"timestamp": "0001-01-01T00:00:00+00:01"}, f"timestamp: '0001-01-01T00:00:00+00:01' {MSG_TS_RANGE}",
     "bad timestamp"),
    ({"timestamp": "0000-06-01T00:00:00Z"}, f"timestamp: '0000-06-01T00:00:00Z' {MSG_TS_RANGE}", "bad timestamp"),
    ({"user_id": "\x1cu1"}, "user_id: '?u1' contains control, invisible or format characters, or invalid UTF-8 (the first as UTF-8: 1c)", "invalid characters"),
    ({"user_id": "u\x85v"}, "user_id: 'u?v' contains control, invisible or format characters, or invalid UTF-8 (the first as UTF-8: c285)", "invalid characters"),
    ({"timestamp": "2026-02-30T10:00:00"},
     f"timestamp: '2026-02-30T10:00:00' {MSG_TS_INVALID}", "bad timestamp"),
    ({"timestamp": "2026-03-01T25:00:00Z"},
     f"timestamp: '2026-03-01T25:00:00Z' {MSG_TS_INVALID}", "bad timestamp"),
    ({"timestamp": "2026-03-01T10:00:00+24:00"},
     f"timestamp: '2026-03-01T10:00:00+24:00' {MSG_TS_INVALID}", "bad timestamp"),
    ({"event_type": "hack"}, "event_type: 'hack' not one of login, logout, view, click, download",
     "unknown category"),
    ({"device_type": "tablet"}, "device_type: 'tablet' not one of desktop, mobile", "unknown category"),
    ({"session_duration_sec": "abc"}, "session_duration_sec: 'abc' is not a number", "wrong type"),
    ({"session_duration_sec": "true"}, "session_duration_sec: 'true' is not a number", "wrong type"),
    ({"session_duration_sec": "1,5"}, "session_duration_sec: '1,5' is not a number", "wrong type"),
    ({"session_duration_sec": "NaN"}, "session_duration_sec: 'NaN' is not a finite number", "wrong type"),
    ({"session_duration_sec": "inf"}, "session_duration_sec: 'inf' is not a finite number", "wrong type"),
    ({"session_duration_sec": "-5"}, "session_duration_sec: -5 is negative", "out of range"),
    ({"session_duration_sec": "604801"}, "session_duration_sec: 604801 exceeds maximum 604800", "out of range"),
    ({"events_in_session": "1.5"}, "events_in_session: '1.5' is not an integer", "wrong type"),
    ({"events_in_session": "many"}, "events_in_session: 'many' is not an integer", "wrong type"),
    ({"events_in_session": "0"}, "events_in_session: 0 is less than 1", "out of range"),
    ({"events_in_session": "-3"}, "events_in_session: -3 is less than 1", "out of range"),
    ({"events_in_session": "100001"}, "events_in_session: 100001 exceeds maximum 100000", "out of range"),
    ({"hour_of_day": "24"}, "hour_of_day: 24 out of range 0-23", "out of range"),
    ({"hour_of_day": "-1"}, "hour_of_day: -1 out of range 0-23", "out of range"),
    ({"hour_of_day": "3.5"}, "hour_of_day: '3.5' is not an integer", "wrong type"),
    ({"day_of_week": "7"}, "day_of_week: 7 out of range 0-6 (0=Monday)", "out of range"),
    ({"day_of_week": "sun"}, "day_of_week: 'sun' is not an integer", "wrong type"),
    ({"hour_of_day": "3"}, "hour_of_day: 3 disagrees with timestamp hour 14 (UTC)", "disagrees with timestamp"),
    ({"day_of_week": "2"}, "day_of_week: 2 disagrees with timestamp weekday 6 (UTC, 0=Monday)",
     "disagrees with timestamp"),
    # Offsets are converted before comparing: 16:05+02:00 is 14:05 UTC, so hour 16 disagrees.
    ({"timestamp": "2026-03-01T16:05:00+02:00", "hour_of_day": "16"},
     "hour_of_day: 16 disagrees with timestamp hour 14 (UTC)", "disagrees with timestamp"),
]


@pytest.mark.parametrize(("overrides", "reason", "kind"), REASONS, ids=[r[1][:48] for r in REASONS])
def test_each_reason_is_exact(overrides: dict[str, Any], reason: str, kind: str) -> None:
    valid, rejected = split(rows_frame([overrides]))
    assert valid.height == 0
    assert rejected.get_column("reason").to_list() == [reason]
    assert rejected.get_column("reason_kind").to_list() == [kind]
    assert kind in REASON_KINDS


def test_first_failing_check_wins() -> None:
    _, rejected = split(rows_frame([{"device_type": None, "session_duration_sec": "-1", "event_type": "x"}]))
    assert rejected.get_column("reason").to_list() == ["missing field: device_type"]


def test_long_values_are_cut_in_messages() -> None:
    _, rejected = split(rows_frame([{"event_type": "z" * 500}]))
    reason = rejected.item(0, "reason")
    assert reason == f"event_type: '{'z' * 60}...' not one of login, logout, view, click, download"


def test_absent_columns_are_missing_fields_and_optional_ones_may_be_absent() -> None:
    raw = rows_frame([{}]).drop("device_type", "hour_of_day", "day_of_week", "session_id")
    valid, rejected = split(raw)
    assert rejected.get_column("reason").to_list() == ["missing field: device_type"]
    valid, rejected = split(rows_frame([{}]).drop("hour_of_day", "day_of_week", "session_id"))
    assert (valid.height, rejected.height) == (1, 0)


def test_good_row_is_stored_with_its_values() -> None:
    valid, rejected = split(rows_frame([{
        "event_id": " e7 ", "user_id": "u9", "timestamp": "2026-03-01T16:05:30.25+02:00",
        "event_type": " Click", "session_duration_sec": "12.5", "events_in_session": "4.0",
        "device_type": "MOBILE", "hour_of_day": "14", "day_of_week": "6", "session_id": "s1",
    }]))
    assert rejected.height == 0
    assert valid.schema == pl.Schema(EVENT_SCHEMA)
    assert valid.row(0, named=True) == {
        "event_id": "e7", "user_id": "u9",
        "timestamp": datetime(2026, 3, 1, 14, 5, 30, 250000, tzinfo=UTC),
        "event_type": "click", "session_duration_sec": 12.5, "events_in_session": 4,
        "device_type": "mobile", "hour_of_day": 14, "day_of_week": 6, "session_id": "s1",
    }


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-03-01T14:05:00Z", datetime(2026, 3, 1, 14, 5, tzinfo=UTC)),
    ("2026-03-01T14:05:00", datetime(2026, 3, 1, 14, 5, tzinfo=UTC)),
    ("2026-03-01 14:05:00", datetime(2026, 3, 1, 14, 5, tzinfo=UTC)),
    ("2026-03-01t14:05:00z", datetime(2026, 3, 1, 14, 5, tzinfo=UTC)),
    ("2026-03-01T14:05:00.123Z", datetime(2026, 3, 1, 14, 5, 0, 123000, tzinfo=UTC)),
    ("2026-03-01T14:05:00.123456789Z", datetime(2026, 3, 1, 14, 5, 0, 123456, tzinfo=UTC)),
    ("2026-03-01T19:35:00+05:30", datetime(2026, 3, 1, 14, 5, tzinfo=UTC)),
    ("2026-03-01T14:05:00-00:00", datetime(2026, 3, 1, 14, 5, tzinfo=UTC)),
    ("2026-03-01T23:30:00-01:00", datetime(2026, 3, 2, 0, 30, tzinfo=UTC)),
    ("  2026-03-01T14:05:00Z  ", datetime(2026, 3, 1, 14, 5, tzinfo=UTC)),
    ("\u30002026-03-01T14:05:00Z\xa0", datetime(2026, 3, 1, 14, 5, tzinfo=UTC)),
    ("9999-12-31T23:59:59.999999Z", datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
    ("0001-01-01T00:30:00+00:30", datetime(1, 1, 1, tzinfo=UTC)),
    ("2024-02-29T12:00:00Z", datetime(2024, 2, 29, 12, tzinfo=UTC)),
])
def test_timestamp_forms_normalise_to_utc(text: str, expected: datetime) -> None:
    valid, rejected = split(rows_frame([{"timestamp": text}]))
    assert rejected.height == 0
    row = valid.row(0, named=True)
    assert row["timestamp"] == expected
    assert row["hour_of_day"] == expected.hour
    assert row["day_of_week"] == expected.weekday()


def test_offset_can_move_the_event_to_another_day() -> None:
    _, rejected = split(rows_frame([{"timestamp": "2026-03-01T23:30:00-01:00", "event_type": "x"}]))
    assert rejected.item(0, "event_date") == date(2026, 3, 2)


def test_typed_input_from_json_or_parquet() -> None:
    raw = pl.DataFrame({
        "event_id": ["a", "b", "c", "d"],
        "user_id": [123, 456, 789, 5],
        "timestamp": [datetime(2026, 3, 1, 14, 5, tzinfo=UTC)] * 4,
        "event_type": ["view"] * 4,
        "session_duration_sec": [30.0, 1.5, 2.0, float("nan")],
        "events_in_session": [3, 1, 2, 2],
        "device_type": ["mobile"] * 4,
        "hour_of_day": [14, None, 14, 14],
        "day_of_week": [6, 6, 6, 6],
    })
    valid, rejected = split(raw.lazy())
    assert valid.get_column("user_id").to_list() == ["123", "456", "789"]
    assert valid.get_column("session_duration_sec").to_list() == [30.0, 1.5, 2.0]
    assert rejected.select("event_id", "user_id", "session_duration_sec", "reason").row(0) == (
        "d", "5", "NaN", "session_duration_sec: 'NaN' is not a finite number"
    )
    assert rejected.item(0, "timestamp") == "2026-03-01T14:05:00+00:00"


def test_floats_and_booleans_from_typed_columns() -> None:
    raw = pl.DataFrame({**{k: [v] * 2 for k, v in GOOD.items() if v is not None},
                        "user_id": [42.0, 7.5], "session_duration_sec": [True, False]})
    _, rejected = split(raw.lazy())
    assert rejected.get_column("user_id").to_list() == ["42", "7.5"]
    assert rejected.get_column("reason").to_list() == [
        "session_duration_sec: 'true' is not a number",
        "user_id: must be a string or an integer, not a number with a fraction"]


def test_nested_values_become_json_text() -> None:
    raw = pl.DataFrame({**{k: [v] * 2 for k, v in GOOD.items() if v is not None},
                        "session_duration_sec": [[1, 2], None],
                        "device_type": [{"kind": "tv"}, {"kind": "desktop"}]})
    _, rejected = split(raw.lazy())
    assert rejected.get_column("reason").to_list() == [
        "session_duration_sec: '[1, 2]' is not a number", "missing field: session_duration_sec"]
    assert rejected.get_column("device_type").to_list() == ['{"kind": "tv"}', '{"kind": "desktop"}']


def test_naive_datetime_column_means_utc() -> None:
    raw = pl.DataFrame({**{k: [v] for k, v in GOOD.items() if v is not None},
                        "timestamp": [datetime(2026, 3, 1, 14, 5)]})
    valid, _ = split(raw.lazy())
    assert valid.item(0, "timestamp") == datetime(2026, 3, 1, 14, 5, tzinfo=UTC)


def test_categories_come_from_settings_case_and_space_insensitive() -> None:
    events = EventSettings(event_types=("Login", "purchase"), device_types=("desktop", "tv"))
    valid, rejected = split(rows_frame([
        {"event_id": "1", "event_type": " LOGIN ", "device_type": "TV"},
        {"event_id": "2", "event_type": "Purchase"},
        {"event_id": "3", "event_type": "view"},
    ]), events)
    assert valid.get_column("event_type").to_list() == ["Login", "purchase"]
    assert valid.get_column("device_type").to_list() == ["tv", "desktop"]
    assert rejected.get_column("reason").to_list() == ["event_type: 'view' not one of Login, purchase"]


def test_maxima_come_from_settings() -> None:
    events = EventSettings(max_session_duration_sec=3600, max_events_in_session=10, max_string_length=8)
    _, rejected = split(rows_frame([
        {"event_id": "1", "session_duration_sec": "3600.5"},
        {"event_id": "2", "events_in_session": "11"},
        {"event_id": "3", "user_id": "123456789"},
        {"event_id": "4", "session_duration_sec": "3600", "events_in_session": "10", "user_id": "12345678"},
    ]), events)
    assert rejected.get_column("reason").to_list() == [
        "session_duration_sec: 3600.5 exceeds maximum 3600",
        "events_in_session: 11 exceeds maximum 10",
        "user_id: longer than 8 characters",
    ]


def test_duplicates_in_batch_keep_the_first_valid_occurrence() -> None:
    valid, rejected = split(rows_frame([
        {"event_id": "a", "user_id": "first"},
        {"event_id": "b", "device_type": "tablet"},   # invalid first copy of b
        {"event_id": "a", "user_id": "second"},
        {"event_id": "b", "user_id": "kept"},
        {"event_id": " a ", "user_id": "third"},
    ]))
    assert valid.select("event_id", "user_id").rows() == [("a", "first"), ("b", "kept")]
    assert rejected.select("source_row", "reason").rows() == [
        (2, "device_type: 'tablet' not one of desktop, mobile"),
        (3, "event_id: 'a' duplicated in this batch (first seen at row 1)"),
        (5, "event_id: 'a' duplicated in this batch (first seen at row 1)"),
    ]


def test_duplicate_ids_are_judged_per_utc_date() -> None:
    valid, rejected = split(rows_frame([
        {"event_id": "a", "timestamp": "2026-03-01T23:00:00Z"},
        {"event_id": "a", "timestamp": "2026-03-02T01:00:00Z"},
        {"event_id": "a", "timestamp": "2026-03-02T00:30:00+01:00"},
    ]))
    assert valid.get_column("timestamp").dt.day().to_list() == [1, 2]
    assert rejected.get_column("reason").to_list() == ["event_id: 'a' duplicated in this batch (first seen at row 1)"]


def test_duplicates_against_stored_ids_are_per_date() -> None:
    existing = pl.LazyFrame({"event_id": ["a", "b"], "event_date": [date(2026, 3, 1), date(2026, 2, 28)]})
    valid, rejected = split(rows_frame([{"event_id": "a"}, {"event_id": "b"}, {"event_id": "a"}]),
                            existing=existing)
    assert valid.get_column("event_id").to_list() == ["b"]
    assert rejected.get_column("reason").to_list() == [
        "event_id: 'a' already stored for 2026-03-01", "event_id: 'a' already stored for 2026-03-01"]
    assert rejected.get_column("reason_kind").unique().to_list() == ["duplicate event_id"]


def test_reader_errors_are_rejected_first() -> None:
    raw = rows_frame([{}, {}]).with_columns(
        pl.Series("read_error", [None, "line is not valid JSON (Expecting value at column 1): 'x'"]))
    valid, rejected = split(raw.with_columns(pl.Series("event_id", ["a", "b"])))
    assert valid.height == 1
    assert rejected.select("event_id", "reason", "reason_kind").row(0) == (
        "b", "line is not valid JSON (Expecting value at column 1): 'x'", "unreadable record")


def test_rejected_rows_keep_original_text_and_every_row_is_accounted_for() -> None:
    rows = [{"event_id": f"e{i}"} for i in range(40)]
    for i, change in enumerate([{"session_duration_sec": " -5 "}, {"hour_of_day": "24"},
                                {"event_type": "hack"}, {"timestamp": "bad"}, {"event_id": "e0"}]):
        rows[3 + i * 7].update(change)
    valid, rejected = split(rows_frame(rows))
    assert valid.height + rejected.height == 40
    seen = sorted(valid.get_column("event_id").to_list()
                  + [f"row{r}" for r in rejected.get_column("source_row").to_list()])
    assert len(seen) == 40
    assert rejected.columns == list(REJECTED_COLUMNS)
    assert rejected.filter(pl.col("source_row") == 4).item(0, "session_duration_sec") == " -5 "
    assert rejected.get_column("source_row").to_list() == [4, 11, 18, 25, 32]
    assert rejected.filter(pl.col("timestamp") == "bad").item(0, "event_date") is None


def test_unknown_columns_are_ignored() -> None:
    valid, _ = split(rows_frame([{}]).with_columns(pl.lit("x").alias("ip_address")))
    assert valid.columns == list(EVENT_SCHEMA)


def test_event_dates_cover_every_date_a_row_can_land_on() -> None:
    raw = rows_frame([{"timestamp": "2026-03-02T00:30:00+01:00"}, {"timestamp": "nope"},
                      {"timestamp": "2026-03-05 10:00:00"}])
    dates = event_dates(raw).collect().get_column("event_date").to_list()
    assert dates == [date(2026, 3, d) for d in (1, 2, 3, 4, 5, 6)]
    valid, _ = split(raw)
    assert set(valid.get_column("timestamp").dt.date()) <= set(dates)


# ------------------------------------------------------------------ one definition of a valid event

TIMESTAMP_EDGES: list[Any] = [
    # accepted: RFC 3339 date-times and the variants RFC 3339 allows; naive means UTC
    "2026-03-01T14:05:00Z", "2026-03-01t14:05:00z", "2026-03-01 14:05:00Z", "2026-03-01T14:05:00",
    "2026-03-01T14:05:00-00:00", "2026-03-01T19:35:00+05:30", "2026-03-01T14:05:00+23:59",
    "2026-03-01T14:05:00-23:59", "2026-03-01T14:05:00.1Z", "2026-03-01T14:05:00.123456Z",
    "2026-03-01T14:05:00.123456789Z", "2024-02-29T12:00:00Z", "2000-02-29T00:00:00Z",
    "9999-12-31T23:59:59Z", "9999-12-31T23:59:59.999999999Z", "0001-01-01T00:00:00Z",
    "0001-01-01T00:30:00+00:30", "9999-12-31T22:59:59-01:00", " 2026-03-01T14:05:00Z ",
    "\t2026-03-01T14:05:00Z\n", "\u00a02026-03-01T14:05:00Z\u3000", "2026-03-01T00:00:00+14:00",
    "0000-12-31T12:00:00-12:00", "0000-12-31T23:59:59.999999-00:01",  # year 0 locally, 0001-01-01 in UTC
    "0000-12-31T23:59:59+00:00", "0000-12-31T23:00:00-00:59",  # still year 0 in UTC: refused
    # refused: dates alone, week and ordinal dates, other ISO-8601 forms, impossible values
    "", "   ", "2026-03-01", "2026-11-11", "2026-W09-7", "2026-W46-3T10:00", "2026-W09-7T14:05:00",
    "2026-060T14:05:00", "2026-03-01T14:05", "2026-03-01T14", "20260301T140500Z", "2026-03-01T140500Z",
    "2026-03-01T14:05:00+0530", "2026-03-01T14:05:00+05", "2026-03-01T14:05:00 UTC", "2026-03-01T14:05:00UTC",
    "2026-03-01T14:05:00 Z", "2026-03-01T14:05:00,5Z", "2026-03-01T14:05:00.Z", "2026-03-01T14:05:00.1234567890Z",
    "2026-03-01T24:00:00Z", "2026-03-01T23:59:60Z", "2026-03-01T25:00:00Z", "2026-03-01T14:60:00Z",
    "2026-02-29T12:00:00Z", "1900-02-29T12:00:00Z", "2026-13-01T00:00:00Z", "2026-00-10T00:00:00Z",
    "2026-04-31T00:00:00Z", "2026-03-00T00:00:00Z", "2026-03-01T14:05:00+24:00", "2026-03-01T14:05:00+23:60",
    "2026-03-01T14:05:00-24:00", "2026-03-01T14:05:00+05:30:00", "2026-03-01T14:05:00[Europe/Paris]",
    "2026-03-01T14:05:00Z\x00", "2026-11-11T10:00:00\x00Z", "\x1c2026-03-01T14:05:00Z", "2026-03-01T14:05:00\x85Z",
    "\u0662\u0660\u0662\u0666-03-01T14:05:00Z", "\uff12\uff10\uff12\uff16-03-01T14:05:00Z", "yesterday",
    "1740830400", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59-00:01", "0001-01-01T00:00:00+00:01",
    "10000-01-01T00:00:00Z", "-2026-03-01T00:00:00Z", "+2026-03-01T00:00:00Z", "2026-3-1T14:05:00Z",
    "2026-03-01T14:05:00ZZ", "2026-03-01_14:05:00Z", "2026-03-01T14:05:00Z" + "0" * 300, "2026-03-01T14:05:00\ud800",
    # refused: not a string at all
    1740830400, 1740830400.5, True, {"at": "2026-03-01T14:05:00Z"}, ["2026-03-01T14:05:00Z"],
]
ID_EDGES: list[Any] = [
    # accepted: strings and integers (a JSON number without a fraction is an integer)
    "u1", " u1 ", "\tu1\n", "\u00a0u1\u3000", "\u00e9", "\u7528\u6237", "\U0001f642", "a" * 256, " " + "a" * 256,
    "u,1", 'u"1', '{"a": 1}', "[1]", "null", "true", "123.0", "0", "-1", "u\u00a0v", "\u2028u1\u2029",
    "\U0001f600", "u\ufffc",
    0, -1, 42, 2**63, 2**64 + 1, 123.0, -0.0, 9007199254740991.0,
    # refused
    "", "   ", "\u3000", "u\x00", "u\x1f", "\x1cu", "u\x7f", "u\x85v", "u\x9f", "u\ufffd", "u\ud800", "a" * 257,
    # refused: invisible, format and separator characters (hardening)
    "\ufeffu1", "u1\ufeff", "u\u2028v", "u\u2029v", "a\u200bb", "a\u200db", "\u202eu1", "u\u2060", "u\u00ad",
    "u\u034f", "\u115fu", "u\u3164", "u\ufe0f", "u\U000e0041", "u\U000e0100", "u\ufffe", "u\U0010ffff",
    "u\u061c", "u\u180e", "\u200b", "u\U0001d173", "u\U00013439",
    10**300, True, False, 1.5, -0.5, 1e300, 9007199254740992.0, float("nan"), float("inf"),
    {}, [], {"$gt": ""}, [0] * 3,
]


def _api_verdict(model: type, event: dict[str, Any]) -> dict[str, Any] | None:
    """What the API makes of the event (its request path: json.loads, then the model), or None if refused."""
    from pydantic import ValidationError

    try:
        checked = model.model_validate(json.loads(json.dumps(event)))
    except ValidationError:
        return None
    stamp, _, _ = checked.time_fields()
    return {"event_id": checked.event_id, "user_id": checked.user_id, "session_id": checked.session_id,
            "timestamp": stamp}


@pytest.mark.integration  # a real subprocess, server or seconds of work
def test_the_api_and_ingest_accept_exactly_the_same_timestamps_and_ids(tmp_path: Path) -> None:
    """The same 200+ edge values to the API's request model and through a real JSON Lines file."""
    from uba.api.schemas import build_event_model
    from uba.ingest.files import ingest_files
    from uba.settings import IngestSettings, Settings

    cases = [("timestamp", value) for value in TIMESTAMP_EDGES]
    cases += [(name, value) for name in ("user_id", "event_id", "session_id") for value in ID_EDGES]
    assert len(cases) >= 100
    events = []
    for row, (name, value) in enumerate(cases, start=1):
        day = date(2026, 1, 1) + timedelta(days=row)  # one day per case: event ids never collide
        event = {"event_id": f"p{row}", "user_id": "u1", "timestamp": f"{day}T10:00:00Z", "event_type": "view",
                 "session_duration_sec": 5, "events_in_session": 1, "device_type": "mobile", name: value}
        events.append(event)
    source = tmp_path / "edges.jsonl"
    source.write_text("".join(json.dumps(event) + "\n" for event in events))
    data = tmp_path / "data"
    summary = ingest_files([source], data, Settings(ingest=IngestSettings(batch_rows=1000)))
    assert summary.rows_read == len(cases)
    stored = {(row["event_id"], row["timestamp"]): row
              for row in pl.read_parquet(data / "events" / "*" / "*.parquet").iter_rows(named=True)}
    rejected = pl.read_parquet(data / "quarantine" / "*" / "*.parquet")
    rows_refused = set(rejected["source_row"].to_list())

    model = build_event_model(EventSettings())
    disagreements = []
    for row, ((name, value), event) in enumerate(zip(cases, events, strict=True), start=1):
        api = _api_verdict(model, event)
        kept = row not in rows_refused
        if (api is not None) != kept:
            disagreements.append((name, value, "api accepts" if api else "ingest accepts"))
        elif api is not None:
            mine = stored.get((api["event_id"], api["timestamp"]), {})
            if {k: mine.get(k) for k in api} != api:
                disagreements.append((name, value, f"api {api} != ingest {mine}"))
    assert not disagreements
    assert 0 < len(stored) < len(cases)


# Every field, as the raw JSON text a client or an export writes: (field, JSON literal).
# One rule in both places (docs/ingest.md, "One definition of a valid event"): numbers
# must be JSON numbers, categories ignore surrounding whitespace and ASCII case, and an
# object that repeats a key is refused.
FIELD_EDGES: list[tuple[str, str]] = [
    *[("event_type", literal) for literal in [
        '"login"', '"LOGIN"', '" login "', '"Login\\t"', '"\\u3000view\\u00a0"', '"DownLoad"', '"logout\\n"',
        '"lo gin"', '"log\\u0130n"', '"clic\\u212a"', '"\\uff4c\\uff4f\\uff47\\uff49\\uff4e"', '"login\\u200b"',
        '"\\ufefflogin"', '"login\\u0000"', '""', '"   "', '"hack"', '5', 'true', 'null', '{}', '["login"]']],
    *[("device_type", literal) for literal in [
        '"desktop"', '"Desktop"', '"MOBILE"', '" mobile"', '"tablet"', '"Desk top"', '1', 'false', '[]']],
    *[("session_duration_sec", literal) for literal in [
        '60', '60.5', '0', '-0.0', '0.0', '1e3', '604800', '604800.0', '"60"', '"60.5"', '" 60"', '""', '"1e3"',
        'true', 'false', 'null', 'NaN', 'Infinity', '-Infinity', '"NaN"', '-1', '604801', '1e400', '[60]',
        '{"v": 60}', '1E3', '5e-1', '0.000001', '-0', '1.7976931348623157e308', '"inf"', '"-5"']],
    *[("events_in_session", literal) for literal in [
        '3', '3.0', '1', '100000', '1e2', '"3"', '"3.0"', '2.5', '0', '-1', '100001', 'true', 'null', '""',
        '9007199254740993', '1e300', '[3]', '-0', '1.0e0', '"1"', 'NaN', '{}']],
    *[("hour_of_day", literal) for literal in [
        '10', '10.0', 'null', '"10"', '""', '9', '24', '-1', '10.5', 'true', '"ten"', '1e1', '"10.0"', 'NaN']],
    *[("day_of_week", literal) for literal in ['null', '"3"', '7', '-1', '1.5', 'false', '"x"', '[]']],
]


def _raw_event(row: int, field: str, literal: str) -> str:
    """One event as JSON text with ``field`` given as ``literal`` (its day: row days after 2026-01-01)."""
    day = date(2026, 1, 1) + timedelta(days=row)
    fields = {"event_id": f'"f{row}"', "user_id": '"u1"', "timestamp": f'"{day}T10:00:00Z"',
              "event_type": '"view"', "session_duration_sec": "5", "events_in_session": "1",
              "device_type": '"mobile"', field: literal}
    return "{" + ", ".join(f'"{key}": {value}' for key, value in fields.items()) + "}"


# Objects that repeat a key, with the same or another value, at the top level or inside a value.
REPEATED_KEY_EVENTS = [
    '{{"event_id": "r{row}", "user_id": "victim", "timestamp": "{day}T10:00:00Z", "event_type": "view", '
    '"session_duration_sec": 5, "events_in_session": 1, "device_type": "mobile", "user_id": "attacker"}}',
    '{{"event_id": "r{row}", "user_id": "u1", "timestamp": "{day}T10:00:00Z", "event_type": "view", '
    '"event_type": "view", "session_duration_sec": 5, "events_in_session": 1, "device_type": "mobile"}}',
    '{{"event_id": "r{row}", "event_id": "r{row}b", "user_id": "u1", "timestamp": "{day}T10:00:00Z", '
    '"event_type": "view", "session_duration_sec": 5, "events_in_session": 1, "device_type": "mobile"}}',
    '{{"event_id": "r{row}", "user_id": "u1", "timestamp": "{day}T10:00:00Z", "event_type": "view", '
    '"session_duration_sec": 5, "events_in_session": 1, "device_type": "mobile", "hour_of_day": null, '
    '"hour_of_day": 3}}',
    '{{"event_id": "r{row}", "user_id": "u1", "timestamp": "{day}T10:00:00Z", "event_type": "view", '
    '"session_duration_sec": 5, "events_in_session": 1, "device_type": "mobile", "session_id": {{"a": 1, "a": 2}}}}',
]


@pytest.mark.integration  # a real subprocess, server or seconds of work
def test_the_api_and_ingest_agree_on_every_field_and_refuse_repeated_keys(tmp_path: Path) -> None:
    """The same raw JSON text to the API's request path (uba.api.body) and through a JSON Lines
    file: numbers as strings, category spellings, booleans, non-finite numbers, repeated keys."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    from uba.api.body import JsonBody
    from uba.api.schemas import build_event_model
    from uba.ingest.files import ingest_files
    from uba.settings import IngestSettings, Settings

    lines = [_raw_event(row, field, literal) for row, (field, literal) in enumerate(FIELD_EDGES, start=1)]
    first_repeated = len(lines) + 1
    for row, template in enumerate(REPEATED_KEY_EVENTS, start=first_repeated):
        lines.append(template.format(row=row, day=date(2026, 1, 1) + timedelta(days=row)))
    assert len(FIELD_EDGES) >= 100
    source = tmp_path / "fields.jsonl"
    source.write_text("\n".join(lines) + "\n")
    data = tmp_path / "data"
    summary = ingest_files([source], data, Settings(ingest=IngestSettings(batch_rows=1000)))
    assert summary.rows_read == len(lines)
    stored = {row["event_id"]: row for row in pl.read_parquet(data / "events" / "*" / "*.parquet").iter_rows(named=True)}
    refused = pl.read_parquet(data / "quarantine" / "*" / "*.parquet")
    reasons = dict(zip(refused["source_row"].to_list(), refused["reason"].to_list(), strict=True))

    body = JsonBody(build_event_model(EventSettings()), 10_000, "1 event")
    disagreements = []
    for row, line in enumerate(lines, start=1):
        try:
            event = body.parse(line.encode())
        except (RequestValidationError, HTTPException):
            event = None
        kept = row not in reasons
        if (event is not None) != kept:
            disagreements.append((line, "api accepts" if event is not None else "ingest accepts", reasons.get(row)))
        elif event is not None:
            mine = stored[event.event_id]  # type: ignore[attr-defined]
            api = {name: getattr(event, name) for name in ("user_id", "event_type", "device_type",
                                                           "session_duration_sec", "events_in_session")}
            api["hour_of_day"], api["day_of_week"] = event.time_fields()[1:]  # type: ignore[attr-defined]
            if {name: mine[name] for name in api} != api:
                disagreements.append((line, f"api {api} != ingest {mine}"))
    assert not disagreements
    repeated = [reasons.get(row, "") for row in range(first_repeated, len(lines) + 1)]
    assert all("repeats the key" in reason for reason in repeated[:-1]), repeated
    assert repeated[-1]  # a repeat inside an id value: refused (for the object id) in both places
    assert 10 < len(stored) < len(lines) - 10
