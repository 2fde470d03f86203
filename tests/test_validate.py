"""validate_events: one test per reason family, timestamp forms, typed input, duplicates."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import polars as pl
import pytest

from uba.schema import EVENT_SCHEMA, RAW_FIELDS
from uba.settings import EventSettings
from uba.validate import REASON_KINDS, REJECTED_COLUMNS, event_dates, validate_events

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
    ({"user_id": "u\x001"}, "user_id: contains control characters or invalid UTF-8", "invalid characters"),
    ({"event_id": "e\ufffd"}, "event_id: contains control characters or invalid UTF-8", "invalid characters"),
    ({"timestamp": "yesterday"}, "timestamp: 'yesterday' is not an ISO-8601 timestamp", "bad timestamp"),
    ({"timestamp": "2026-03-01"}, "timestamp: '2026-03-01' is not an ISO-8601 timestamp", "bad timestamp"),
    ({"timestamp": "1740830400"}, "timestamp: '1740830400' is not an ISO-8601 timestamp", "bad timestamp"),
    ({"timestamp": "2026-02-30T10:00:00"},
     "timestamp: '2026-02-30T10:00:00' is not a valid date, time or UTC offset", "bad timestamp"),
    ({"timestamp": "2026-03-01T25:00:00Z"},
     "timestamp: '2026-03-01T25:00:00Z' is not a valid date, time or UTC offset", "bad timestamp"),
    ({"timestamp": "2026-03-01T10:00:00+24:00"},
     "timestamp: '2026-03-01T10:00:00+24:00' is not a valid date, time or UTC offset", "bad timestamp"),
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
    ("2026-03-01T14:05", datetime(2026, 3, 1, 14, 5, tzinfo=UTC)),
    ("2026-03-01T14:05:00.123Z", datetime(2026, 3, 1, 14, 5, 0, 123000, tzinfo=UTC)),
    ("2026-03-01T14:05:00.123456789Z", datetime(2026, 3, 1, 14, 5, 0, 123456, tzinfo=UTC)),
    ("2026-03-01T14:05:00,5Z", datetime(2026, 3, 1, 14, 5, 0, 500000, tzinfo=UTC)),
    ("2026-03-01T19:35:00+05:30", datetime(2026, 3, 1, 14, 5, tzinfo=UTC)),
    ("2026-03-01T19:35:00+0530", datetime(2026, 3, 1, 14, 5, tzinfo=UTC)),
    ("2026-03-01T09:05:00-05", datetime(2026, 3, 1, 14, 5, tzinfo=UTC)),
    ("2026-03-01 14:05:00 UTC", datetime(2026, 3, 1, 14, 5, tzinfo=UTC)),
    ("2026-03-01T23:30:00-01:00", datetime(2026, 3, 2, 0, 30, tzinfo=UTC)),
    ("  2026-03-01T14:05:00Z  ", datetime(2026, 3, 1, 14, 5, tzinfo=UTC)),
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
        "session_duration_sec: 'true' is not a number", "session_duration_sec: 'false' is not a number"]


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
