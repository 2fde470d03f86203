"""The optional user directory: `uba-batch users import` and `generate --directory`, on real files."""

from __future__ import annotations

import decimal
import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from jobs.cli import cli

HEADER = "user_id,department,role,is_privileged,criticality,badge\n"


def _import(tmp_path: Path, body: str, *extra: str, name: str = "users.csv") -> Result:
    source = tmp_path / name
    source.write_text(body)
    return CliRunner().invoke(cli, ["users", "import", str(source), "--data-dir", str(tmp_path / "data"), *extra])


def _stored(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "data" / "directory" / "users.parquet")


def _quarantined(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "data" / "directory" / "quarantine")


def test_every_row_is_stored_or_quarantined_with_the_field_and_value(tmp_path: Path) -> None:
    body = (HEADER + "u1,finance,analyst,no,high,7\n" + "u2,,,,,\n" + ",eng,dev,yes,low,\n"
            + "u3,eng,dev,maybe,low,\n" + "u1,hr,x,no,low,\n" + "u4,ops,admin,YES,Critical,\n"
            + "u5,ops,admin,true,extreme,\n" + f"{'x' * 300},ops,a,no,low,\n" + "u6,ops\u0007,a,no,low,\n"
            + "u7,sales,manager,1,medium,\n" + "".join(f"v{i},hr,analyst,no,low,\n" for i in range(4)))
    result = _import(tmp_path, body)
    assert result.exit_code == 0, result.output
    assert "read 14 rows: 8 stored, 6 quarantined; the directory holds 8 users" in result.output
    stored = _stored(tmp_path)
    assert stored.filter(pl.col("user_id").str.starts_with("u")).rows() == [
        ("u1", "finance", "analyst", False, "high"), ("u2", None, None, False, None),
        ("u4", "ops", "admin", True, "critical"), ("u7", "sales", "manager", True, "medium")]
    bad = _quarantined(tmp_path).sort("line")
    assert bad["line"].to_list() == [4, 5, 6, 8, 9, 10]
    reasons = bad["reason"].to_list()
    assert reasons[0] == "user_id is missing"
    assert reasons[1] == "is_privileged 'maybe' is not true or false"
    assert reasons[2] == "user_id 'u1' repeats line 2"
    assert reasons[3] == "criticality 'extreme' is not one of low, medium, high, critical"
    assert reasons[4] == "user_id longer than 256 characters"
    assert reasons[5].startswith("department contains control")
    assert bad["user_id"][1] == "u3" and bad["source"].str.ends_with("users.csv").all()


def test_a_mostly_bad_file_exits_2_after_storing_what_it_could(tmp_path: Path) -> None:
    result = _import(tmp_path, HEADER + "u1,a,b,no,low,\n" + ",a,b,no,low,\n" + "u2,a,b,zzz,low,\n")
    assert result.exit_code == 2
    assert "67% of the rows were quarantined (ingest.max_quarantine_ratio 0.5)" in result.output
    assert _stored(tmp_path)["user_id"].to_list() == ["u1"]


def test_a_later_import_updates_listed_users_and_replace_drops_the_rest(tmp_path: Path) -> None:
    assert _import(tmp_path, HEADER + "u1,finance,analyst,no,low,\nu2,sales,analyst,no,low,\n").exit_code == 0
    assert _import(tmp_path, HEADER + "u2,sales,manager,no,high,\nu3,hr,analyst,no,,\n").exit_code == 0
    assert _stored(tmp_path).select("user_id", "role").rows() == [("u1", "analyst"), ("u2", "manager"),
                                                                   ("u3", "analyst")]
    result = _import(tmp_path, HEADER + "u3,hr,admin,yes,critical,\n", "--replace")
    assert result.exit_code == 0 and "the directory holds 1 users" in result.output
    assert _stored(tmp_path).rows() == [("u3", "hr", "admin", True, "critical")]


def test_a_file_without_a_column_keeps_the_stored_values_of_that_column(tmp_path: Path) -> None:
    """An IdP export (no criticality, no privilege) after the HR import must not reset them."""
    assert _import(tmp_path, HEADER + "u1,finance,analyst,yes,critical,\nu2,sales,analyst,no,low,\n").exit_code == 0
    result = _import(tmp_path, "user_id,department,role\nu1,finance,manager\nu3,hr,\n")
    assert result.exit_code == 0, result.output
    assert "kept as stored for the users it lists: is_privileged, criticality" in result.output
    assert _stored(tmp_path).rows() == [("u1", "finance", "manager", True, "critical"),
                                        ("u2", "sales", "analyst", False, "low"),
                                        ("u3", "hr", None, False, None)]
    assert _import(tmp_path, "user_id,criticality\nu2,\n").exit_code == 0  # an empty cell is unknown
    assert _stored(tmp_path).row(1) == ("u2", "sales", "analyst", False, None)
    assert _import(tmp_path, "user_id,role\nu1,admin\n", "--replace").exit_code == 0
    assert _stored(tmp_path).rows() == [("u1", None, "admin", False, None)]


def test_parquet_files_are_read_flat_and_refused_when_they_are_not(tmp_path: Path) -> None:
    good = tmp_path / "users.parquet"
    pl.DataFrame({"user_id": ["u1", "u2"], "department": ["eng", None], "is_privileged": [True, False],
                  "criticality": ["low", "high"], "photo": [b"\x00", b"\x01"]}).write_parquet(good)
    runner = CliRunner()
    ok = runner.invoke(cli, ["users", "import", str(good), "--data-dir", str(tmp_path / "data")])
    assert ok.exit_code == 0 and "2 stored, 0 quarantined" in ok.output, ok.output
    assert _stored(tmp_path).rows() == [("u1", "eng", None, True, "low"), ("u2", None, None, False, "high")]
    nested = tmp_path / "nested.parquet"
    pl.DataFrame({"user_id": ["u1"], "role": [["a", "b"]]}).write_parquet(nested)
    refused = runner.invoke(cli, ["users", "import", str(nested), "--data-dir", str(tmp_path / "data")])
    assert refused.exit_code == 1 and "column role is large_list<element: large_string>, not a plain value" in refused.output
    fake = tmp_path / "fake.parquet"
    fake.write_bytes(b"not parquet at all")
    broken = runner.invoke(cli, ["users", "import", str(fake), "--data-dir", str(tmp_path / "data")])
    assert broken.exit_code == 1 and f"cannot read Parquet file {fake}" in broken.output
    assert "Traceback" not in broken.output + refused.output
    assert _stored(tmp_path).height == 2, "a refused file stores nothing"


@pytest.mark.parametrize(("body", "message"), [
    ("userid,department\nu1,eng\n", "no user_id column (expected user_id, department, role, is_privileged, "
                                    "criticality; found userid, department)"),
    ("user_id,role\nu1,a\nu1,b,c\n", "cannot read CSV file"),
])
def test_unreadable_files_are_one_line_errors_and_store_nothing(tmp_path: Path, body: str, message: str) -> None:
    result = _import(tmp_path, body)
    assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "data" / "directory" / "users.parquet").exists()


def test_a_latin1_export_is_refused_naming_the_line_and_byte_and_the_cure(tmp_path: Path) -> None:
    """An HR export saved as Latin-1 (a department "Réception") was refused as "invalid
    utf-8 sequence", with no line and no hint; it is still refused, not guessed at."""
    source = tmp_path / "users.csv"
    source.write_bytes(HEADER.encode() + b"u1,finance,analyst,no,high,b1\r\nu2,R\xe9ception,accueil,no,low,b2\r\n")
    result = CliRunner().invoke(cli, ["users", "import", str(source), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert line == (f"error: {source} is not UTF-8: line 3 holds the byte 0xe9 (byte offset 91 of the file), which "
                    "is not valid UTF-8; save the file as UTF-8 (a spreadsheet's \"CSV UTF-8\" format) and try again")
    assert not (tmp_path / "data" / "directory" / "users.parquet").exists()


def test_a_header_only_file_is_a_warning(tmp_path: Path) -> None:
    result = _import(tmp_path, HEADER)
    assert result.exit_code == 0 and "has no data rows" in result.output


def test_blank_rows_are_skipped_not_quarantined(tmp_path: Path) -> None:
    """A blank line or a spreadsheet's row of empty cells was quarantined as "user_id is
    missing", so a one-user export with two trailing blank lines exited 2 (found by an attack)."""
    result = _import(tmp_path, HEADER + "u1,finance,analyst,no,high,\n\n,,,,,\n  , ,,,,\n")
    assert result.exit_code == 0, result.output
    assert "read 4 rows: 1 stored, 0 quarantined" in result.output and "skipped 3 blank rows" in result.output
    assert _stored(tmp_path)["user_id"].to_list() == ["u1"]
    assert not (tmp_path / "data" / "directory" / "quarantine").exists()


def test_a_spreadsheet_export_with_trailing_empty_columns_is_imported(tmp_path: Path) -> None:
    """A spreadsheet's CSV ending every line, header too, with empty cells was refused
    whole ("the header repeats column ''"); an unnamed column names no field."""
    body = "user_id,department,role,is_privileged,criticality,,\r\nu1,finance,analyst,Yes,HIGH,,\r\n"
    result = _import(tmp_path, "\ufeff" + body + ",,,,,,\r\n")
    assert result.exit_code == 0, result.output
    assert "ignored columns (not user_id, department, role, is_privileged, criticality): '(column 6)', " \
        "'(column 7)'" in result.output
    assert _stored(tmp_path).to_dicts() == [{"user_id": "u1", "department": "finance", "role": "analyst",
                                            "is_privileged": True, "criticality": "high"}]


def test_replace_with_no_valid_row_is_refused_and_keeps_the_directory(tmp_path: Path) -> None:
    """A truncated or wrong export given with --replace deleted every stored user (found by
    an attack), and scoring then ran without peer groups or privilege weights."""
    assert _import(tmp_path, HEADER + "u1,finance,analyst,no,low,\nu2,sales,analyst,yes,high,\n").exit_code == 0
    before = _stored(tmp_path)
    header_only = _import(tmp_path, HEADER, "--replace")
    assert header_only.exit_code == 1
    assert "it has no data rows; --replace would remove all 2 users of the directory, so nothing was changed" \
        in header_only.output
    all_bad = _import(tmp_path, HEADER + "u3,hr,analyst,no,extreme,\n", "--replace")
    assert all_bad.exit_code == 1
    assert ("none of its 1 rows is valid (line 2: criticality 'extreme' is not one of low, medium, high, "
            "critical)") in all_bad.output
    assert _stored(tmp_path).equals(before)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert _import(fresh, HEADER, "--replace").exit_code == 0  # nothing stored yet: nothing to lose


def test_generate_writes_a_directory_whose_departments_and_roles_differ(tmp_path: Path) -> None:
    out = tmp_path / "data"
    result = CliRunner().invoke(cli, ["generate", "--out", str(out), "--users", "300", "--days", "3", "--directory"])
    assert result.exit_code == 0 and "directory: 300 users" in result.output, result.output
    directory = pl.read_parquet(out / "directory" / "users.parquet")
    truth = pl.read_parquet(out / "labels" / "users.parquet")
    by_department = directory.join(truth, on="user_id").group_by("department").agg(
        pl.col("hour_centre").mean(), pl.col("persona").n_unique())
    assert by_department.height >= 6 and (by_department["persona"] == 1).all()
    hours = dict(by_department.select("department", "hour_centre").iter_rows())
    assert hours["operations"] < 4 and 11 < hours["finance"] < 15, "departments keep their own hours"
    assert (directory["is_privileged"] == (directory["role"] == "admin")).all()
    by_role = {row["role"]: row for row in directory.join(truth, on="user_id").group_by("role").agg(
        pl.len().alias("users"), pl.col("mobile_share").mean(), pl.col("download_share").mean(),
        (pl.col("device_habit") == "desktop_only").mean().alias("desk"),
        pl.col("session_median_sec").median()).iter_rows(named=True)}
    admin, analyst, manager = by_role["admin"], by_role["analyst"], by_role["manager"]
    assert 0.04 < admin["users"] / 300 < 0.14 and 0.12 < manager["users"] / 300 < 0.3, by_role
    assert admin["desk"] > analyst["desk"] + 0.1 and admin["download_share"] > 1.4 * analyst["download_share"], by_role
    assert manager["mobile_share"] > analyst["mobile_share"] + 0.15, by_role
    assert manager["session_median_sec"] < 0.85 * analyst["session_median_sec"], by_role
    plain = tmp_path / "plain"
    assert CliRunner().invoke(cli, ["generate", "--out", str(plain), "--users", "300", "--days", "3"]).exit_code == 0
    assert not (plain / "directory").exists(), "without --directory behaviour is as before"
    events = [pl.read_parquet(d / "events").sort("event_id") for d in (out, plain)]
    assert events[0].equals(events[1]), "the directory's draws do not change the events"


def test_header_names_padded_with_spaces_are_read_and_unknown_names_are_named(tmp_path: Path) -> None:
    """`user_id, department, role` (a space after each comma, as people type it) once
    stored every user without a department, silently; a `Department` is named as ignored."""
    result = _import(tmp_path, "user_id, department, role ,is_privileged\nu1, finance, analyst, yes\n")
    assert result.exit_code == 0 and "ignored columns" not in result.output, result.output
    assert _stored(tmp_path).rows() == [("u1", "finance", "analyst", True, None)]
    result = _import(tmp_path, "user_id,Department,badge\nu2,sales,7\n")
    assert result.exit_code == 0, result.output
    assert "ignored columns (not user_id, department, role, is_privileged, criticality): 'Department', 'badge'" \
        in result.output
    assert _stored(tmp_path).filter(pl.col("user_id") == "u2")["department"].to_list() == [None]


def _typed_parquet(path: Path, user_ids: pa.Array, **columns: pa.Array) -> Path:
    pq.write_table(pa.table({"user_id": user_ids, **columns}), path)
    return path


def test_typed_parquet_ids_read_as_ingest_reads_them(tmp_path: Path) -> None:
    """A pandas export stores integer ids with a null as float64 (1.0): the directory once
    stored user "1.0", which no event's user "1" ever matched (no peer group, no
    privilege weight); a fractional, NaN, infinite or boolean id was stored as a user, and
    bytes that are not UTF-8 ended the import with a traceback."""
    source = _typed_parquet(
        tmp_path / "floats.parquet", pa.array([1.0, 2.5, float("nan"), float("inf"), None, 3.0]),
        department=pa.array(["a", "b", "c", "d", "e", "f"]), is_privileged=pa.array([1, 0, 0, 0, 0, 1], pa.int8()))
    result = CliRunner().invoke(cli, ["users", "import", str(source), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 2 and "read 6 rows: 2 stored, 4 quarantined" in result.output, result.output
    assert _stored(tmp_path).select("user_id", "department", "is_privileged").rows() == [
        ("1", "a", True), ("3", "f", True)]
    bad = _quarantined(tmp_path).sort("line")
    fraction = "user_id must be a string or an integer, not a number with a fraction"
    assert bad.select("line", "reason", "user_id").rows() == [
        (2, fraction, "2.5"), (3, fraction, "NaN"), (4, fraction, "inf"), (5, "user_id is missing", None)]
    odd = _typed_parquet(tmp_path / "odd.parquet", pa.array([b"u9", b"\xff\xfe"], pa.binary()),
                         role=pa.array([decimal.Decimal("1.00"), None], pa.decimal128(10, 2)))
    result = CliRunner().invoke(cli, ["users", "import", str(odd), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert _stored(tmp_path).filter(pl.col("user_id") == "u9").rows() == [("u9", None, "1", False, None)]
    assert _quarantined(tmp_path).filter(pl.col("line") == 2, pl.col("source").str.ends_with("odd.parquet"))[
        "reason"].to_list() == ["user_id contains control, invisible or format characters, or invalid UTF-8"]
    decimal_ids = _typed_parquet(tmp_path / "decimal.parquet", pa.array([decimal.Decimal("7.00")], pa.decimal128(10, 2)))
    assert CliRunner().invoke(cli, ["users", "import", str(decimal_ids), "--data-dir", str(tmp_path / "data")]
                              ).exit_code == 0
    assert "7" in _stored(tmp_path)["user_id"].to_list()
    flags = _typed_parquet(tmp_path / "bools.parquet", pa.array([True]))
    result = CliRunner().invoke(cli, ["users", "import", str(flags), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 2 and "true" not in _stored(tmp_path)["user_id"].to_list()


@pytest.mark.parametrize(("column", "message"), [
    (pa.array([1], pa.duration("s")), "column role is duration[s], a duration, not a plain value"),
    (pa.array([1], pa.timestamp("s", tz="Mars/Olympus")), "a timestamp in the unknown time zone 'Mars/Olympus'"),
    (pa.array([decimal.Decimal(1)], pa.decimal256(50, 2)), "column role is decimal256(50, 2), a 256-bit decimal"),
], ids=["duration", "unknown-zone", "decimal256"])
def test_parquet_columns_polars_cannot_read_as_text_are_one_line(tmp_path: Path, column: pa.Array,
                                                                  message: str) -> None:
    """These ended the import with a Polars traceback (a panic, for the time zone)."""
    source = _typed_parquet(tmp_path / "users.parquet", pa.array(["u1"]), role=column)
    result = CliRunner().invoke(cli, ["users", "import", str(source), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "data" / "directory" / "users.parquet").exists()


def test_quarantine_names_the_line_a_row_starts_on_after_a_cell_with_line_breaks(tmp_path: Path) -> None:
    """A quoted cell holding a line break (a multi-line department in an HR export) made
    every later reason name the line above the bad row (the record number, not the line)."""
    body = ('user_id,department,role\r\nu1,"Research\r\nand Development",x\r\nu2,ok,y\r\n\r\n'
            ',missing,z\r\nu2,again,z\r\n')
    result = _import(tmp_path, body)
    assert "read 5 rows: 1 stored, 3 quarantined" in result.output, result.output
    assert "skipped 1 blank rows" in result.output  # line 5
    assert _quarantined(tmp_path).sort("line").select("line", "reason").rows() == [
        (2, "department contains control, invisible or format characters, or invalid UTF-8"),
        (6, "user_id is missing"), (7, "user_id 'u2' repeats line 4")]


@pytest.mark.parametrize("name", ["hr[1].parquet", "hr[1].csv"])
def test_a_file_named_like_a_glob_pattern_is_read_as_that_file(tmp_path: Path, name: str) -> None:
    """Polars reads a path as a glob by default: importing ``hr[1].parquet`` stored the rows
    of a neighbouring ``hr1.parquet`` (the pattern's match) instead of its own."""
    ours = pl.DataFrame({"user_id": ["u1", "u2"], "department": ["eng", "ops"]})
    decoy = pl.DataFrame({"user_id": ["x9"], "department": ["wrong"]})
    write = (lambda frame, path: frame.write_parquet(path)) if name.endswith(".parquet") else \
        (lambda frame, path: frame.write_csv(path))
    write(ours, tmp_path / name)
    write(decoy, tmp_path / name.replace("[1]", "1"))
    result = CliRunner().invoke(cli, ["users", "import", str(tmp_path / name), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert _stored(tmp_path).sort("user_id")["user_id"].to_list() == ["u1", "u2"]


def test_concurrent_imports_of_different_departments_all_land(tmp_path: Path) -> None:
    """Six `users import` processes at once, one department each (an HR sync and an IdP sync
    overlapping): each read the same stored table and the last write won, so half the
    departments were gone while every process had printed "stored" (found by an attack).
    The read-merge-write now holds the directory's lock."""
    import subprocess
    import sys

    uba = Path(sys.executable).with_name("uba-batch")
    files = []
    for k in range(6):
        files.append(tmp_path / f"dept{k}.csv")
        files[-1].write_text("user_id,department\n" + "".join(f"d{k}-u{i},dept{k}\n" for i in range(200)))
    jobs = [subprocess.Popen([str(uba), "users", "import", str(f), "--data-dir", str(tmp_path / "data")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for f in files]
    outputs = [job.communicate(timeout=120)[0] for job in jobs]
    assert all(job.returncode == 0 for job in jobs), outputs
    stored = _stored(tmp_path)
    assert stored.height == 1200 and stored["user_id"].n_unique() == 1200
    assert stored.group_by("department").len().sort("department")["len"].to_list() == [200] * 6
    totals = sorted(int(out.split("the directory holds ")[1].split(" ")[0]) for out in outputs)
    assert totals == [200, 400, 600, 800, 1000, 1200], "each import saw every earlier one"


@pytest.mark.parametrize("blocker", ["folder", "dangling link"])
def test_something_else_in_the_directory_files_place_is_one_line_and_nothing_is_written(
        tmp_path: Path, blocker: str) -> None:
    """A folder where users.parquet belongs made `users import` end in a traceback
    (IsADirectoryError from the final rename), and a link whose target is gone (an HR share
    not mounted) was taken for "no directory" (found by an attack)."""
    place = tmp_path / "data" / "directory" / "users.parquet"
    place.parent.mkdir(parents=True)
    if blocker == "folder":
        place.mkdir()
    else:
        place.symlink_to(tmp_path / "unmounted" / "users.parquet")
    for extra in ((), ("--replace",)):
        result = _import(tmp_path, HEADER + "u1,finance,analyst,no,low,\n", *extra)
        assert result.exit_code == 1, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert result.output.strip().splitlines() == [
            f"error: {place} is not a regular file (a folder, FIFO or "
            "link to nothing is in its place): the user directory cannot be read there; remove it, then import "
            "the directory again (uba-batch users import FILE)"]
    assert sorted(p.name for p in place.parent.iterdir()) == [".lock", "users.parquet"]
    assert os.path.lexists(place) and not place.is_file()
