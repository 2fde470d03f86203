"""Replay of the hostile-input corpus of ingest (tests/hostile/ingest/, hardening).

Every case is an input file ``<case>.<ext>`` (or a ``<case>.recipe.json`` that builds large
or special inputs at test time: a 10 MB field, a gzip bomb, a symlink loop) and a
``<case>.expect.json`` stating the verdict. Each case goes through the real CLI,
``uba-batch ingest ... --data-dir D --json`` (in-process with click's runner, so the
replay stays fast; one test runs the installed entry point as a subprocess), and must
meet its verdict with:

* nothing lost: read == written + quarantined, as expected, and the stored parts hold
  exactly those rows;
* nothing forged: the stored events are exactly the expected (event_id, user_id) pairs;
* no traceback, the expected exit code, a one-line error naming what stopped the run,
  and a summary under ``ingest_runs/`` (``failed`` when the run stopped).

Recipe format (``files`` are made in order inside the case's work folder):

* ``{"path", "parts", "gzip"}``: the concatenation of ``{"text": s}``,
  ``{"repeat": s, "times": n}`` and ``{"numbered": "k{i}", "count": n}`` parts;
* ``{"path", "gzip_members": [{"parts", "copies"}]}``: a multi-member gzip file, each
  member compressed once and written ``copies`` times (a small file that inflates a lot);
* ``{"path", "jsonl_numbered": {"template", "extra_key", "count"}}``: JSON Lines whose
  string values and one extra key have ``{i}`` replaced by the line number
  (``json_numbered``: the same objects as one JSON array);
* ``{"path", "parquet": {"rows", "extra_columns", "types"}}``: a Parquet file of those rows;
  ``types`` gives a column a stored type: ``datetime[ms]`` / ``datetime[us]`` /
  ``duration[us]`` / ``date`` from integers, ``datetime[ms, <zone>]`` from integers,
  ``binary`` from hex strings, ``utf8-unchecked`` (a string column holding the bytes of
  hex strings, as a careless writer can produce: Arrow does not check them),
  ``decimal128[p, s]`` / ``decimal256[p, s]`` from strings, ``timestamp[us, <zone>]`` from
  integers with any zone name; ``repeated_columns`` appends a second column of a name,
  ``long_values`` sets one value to ``bytes`` characters, ``compression`` picks the codec,
  ``dictionary_value: {"column", "bytes", "rows"}`` tiles the first row ``rows`` times with
  that column a dictionary of one ``bytes``-character value (stored once; ``in_list``: each
  row a one-element list of it; ``value_type``: a plain ``string_view``, ``binary_view`` or
  ``fixed_size_binary`` column of that value instead);
* ``"copies": n`` on any of these makes n files, ``{f}`` replaced by each one's number;
* ``{"symlink", "target"}`` and ``{"hardlink", "target"}``; ``inputs`` are the CLI
  arguments, ``before`` inputs are ingested first (their events must survive), ``env``
  sets settings, ``fault`` makes the Nth Parquet write of the run fail with an errno.

``expect`` may also state ``ignored_columns`` (how many names the file's summary lists,
and whether it says there were more) for inputs full of keys outside the event schema, and
``event_parts`` (how many events parts the run stored). A Parquet recipe may set
``row_group_size``.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from uba import io as storage

CORPUS = Path(__file__).parent / "hostile" / "ingest"
REPO = Path(__file__).resolve().parents[1]


def case_names() -> list[str]:
    return sorted(p.name.removesuffix(".expect.json") for p in CORPUS.glob("*.expect.json"))


# ------------------------------------------------------------------ building inputs


def _parts_bytes(parts: list[dict[str, Any]]) -> Iterator[bytes]:
    for part in parts:
        if "text" in part:
            yield part["text"].encode()
        elif "repeat" in part:
            yield part["repeat"].encode() * part["times"]
        else:
            yield "".join(part["numbered"].replace("{i}", str(i)) for i in range(part["count"])).encode()


def _numbered_lines(spec: dict[str, Any]) -> Iterator[str]:
    for i in range(spec["count"]):
        record = {k: v.replace("{i}", str(i)) if isinstance(v, str) else v for k, v in spec["template"].items()}
        record[spec["extra_key"].replace("{i}", str(i))] = i
        yield json.dumps(record) + "\n"


def _typed(values: list[Any], kind: str) -> pa.Array:
    if kind.startswith("decimal"):  # decimal128[5, 1] / decimal256[76, 2] from strings
        from decimal import Decimal

        precision, scale = (int(x) for x in kind.partition("[")[2].rstrip("]").split(","))
        maker = pa.decimal256 if kind.startswith("decimal256") else pa.decimal128
        return pa.array([None if v is None else Decimal(v) for v in values], type=maker(precision, scale))
    if kind.startswith("timestamp["):  # timestamp[us, <any zone>] from integers, unchecked by Polars
        unit, _, zone = kind.partition("[")[2].rstrip("]").partition(", ")
        return pa.array(values, type=pa.timestamp(unit, tz=zone or None))
    if kind in ("binary", "utf8-unchecked"):
        raw = pa.array([None if v is None else bytes.fromhex(v) for v in values], type=pa.binary())
        return raw if kind == "binary" else pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())
    unit, _, zone = kind.partition("[")[2].rstrip("]").partition(", ")
    ints = pl.Series(values, dtype=pl.Int64)
    if kind.startswith("datetime"):
        return ints.cast(pl.Datetime(unit, zone or None)).to_arrow()
    if kind.startswith("duration"):
        return ints.cast(pl.Duration(unit)).to_arrow()
    if kind == "date":
        return ints.cast(pl.Int32).cast(pl.Date).to_arrow()
    raise ValueError(f"unknown parquet type {kind!r} in the corpus")


def _parquet(path: Path, spec: dict[str, Any]) -> None:
    frame = pl.DataFrame(spec["rows"])
    extra = [pl.lit(i).alias(f"extra_{i}") for i in range(spec.get("extra_columns", 0))]
    table = (frame.with_columns(extra) if extra else frame).to_arrow()
    for name, kind in spec.get("types", {}).items():
        column = _typed(frame.get_column(name).to_list(), kind)
        table = table.set_column(table.column_names.index(name), name, column)
    for name, values in spec.get("repeated_columns", {}).items():  # a second column of that name
        table = pa.Table.from_arrays([*table.columns, pa.array(values)], names=[*table.column_names, name])
    for long in spec.get("long_values", []):  # one value of many bytes (compresses to almost nothing)
        column = table.column(long["column"]).to_pylist()
        column[long["row"]] = "x" * long["bytes"]
        table = table.set_column(table.column_names.index(long["column"]), long["column"], pa.array(column))
    if "dictionary_value" in spec:  # the one row tiled, one long value stored once in a dictionary
        table = _dictionary_tiled(table, spec["dictionary_value"])
    pq.write_table(table, path, compression=spec.get("compression", "snappy"), row_group_size=spec.get("row_group_size"))


def _dictionary_tiled(table: pa.Table, spec: dict[str, Any]) -> pa.Table:
    """``spec["rows"]`` copies of the table's first row (event_id numbered ``<id>-<i>``), the
    ``column`` a dictionary holding one ``bytes``-character value: a small file whose rows
    decode to rows x bytes."""
    count = spec["rows"]
    first = table.slice(0, 1).to_pylist()[0]
    columns = {name: pa.array([value] * count) for name, value in first.items()}
    columns["event_id"] = pa.array([f"{first['event_id']}-{i}" for i in range(count)])
    values = pa.DictionaryArray.from_arrays(pa.array([0] * count, pa.int32()), pa.array(["x" * spec["bytes"]]))
    if spec.get("value_type"):  # a plain column of that type (the writer makes the dictionary pages)
        values = _one_value_column(spec["value_type"], spec["bytes"], count)
    if spec.get("in_list"):  # each row a one-element list of that value: nested, still one dictionary entry
        values = pa.ListArray.from_arrays(pa.array(range(count + 1), pa.int32()), values)
    columns[spec["column"]] = values
    return pa.table(columns)


def _one_value_column(kind: str, size: int, count: int) -> pa.Array:
    """``count`` rows of one ``size``-byte value as ``string_view`` / ``binary_view`` (every
    view naming the same bytes, so the column costs one value) or ``fixed_size_binary``."""
    if kind == "fixed_size_binary":
        return pa.array([b"x" * size] * count, pa.binary(size))
    views = np.zeros((count, 4), dtype=np.int32)  # length, 4-byte prefix, buffer 0, offset 0
    views[:, 0] = size
    views[:, 1] = int.from_bytes(b"xxxx", "little")
    kinds = {"string_view": pa.string_view(), "binary_view": pa.binary_view()}
    return pa.Array.from_buffers(kinds[kind], count, [None, pa.py_buffer(views.tobytes()), pa.py_buffer(b"x" * size)])


def make_file(work: Path, spec: dict[str, Any]) -> None:
    """One entry of a recipe's ``files`` (``copies``: that many files, ``{f}`` in the path
    and in text parts replaced by the copy's number)."""
    if "copies" in spec:
        for number in range(spec["copies"]):
            copy = json.loads(json.dumps({k: v for k, v in spec.items() if k != "copies"}).replace("{f}", str(number)))
            make_file(work, copy)
        return
    if "symlink" in spec:
        (work / spec["symlink"]).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(spec["target"], work / spec["symlink"])
        return
    path = work / spec.get("path", spec.get("hardlink", ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    if "hardlink" in spec:
        os.link(work / spec["target"], path)
    elif "gzip_members" in spec:
        with open(path, "wb") as out:
            for member in spec["gzip_members"]:
                packed = gzip.compress(b"".join(_parts_bytes(member["parts"])), compresslevel=9)
                for _ in range(member.get("copies", 1)):
                    out.write(packed)
    elif "jsonl_numbered" in spec:
        path.write_text("".join(_numbered_lines(spec["jsonl_numbered"])))
    elif "json_numbered" in spec:
        path.write_text("[" + ",".join(_numbered_lines(spec["json_numbered"])) + "]")
    elif "parquet" in spec:
        _parquet(path, spec["parquet"])
    else:
        body = b"".join(_parts_bytes(spec.get("parts", [])))
        path.write_bytes(gzip.compress(body) if spec.get("gzip") else body)


def prepare(name: str, work: Path) -> dict[str, Any]:
    """Build the case's inputs in ``work``; the recipe (or a one-file recipe for a plain input)."""
    recipe_path = CORPUS / f"{name}.recipe.json"
    if recipe_path.exists():
        recipe = json.loads(recipe_path.read_text())
        for spec in recipe["files"]:
            make_file(work, spec)
        return recipe
    (source,) = [p for p in CORPUS.glob(f"{name}.*") if not p.name.endswith(".expect.json")]
    (work / source.name).write_bytes(source.read_bytes())
    return {"inputs": [source.name]}


# ------------------------------------------------------------------ running


@contextmanager
def failing_write(monkeypatch: pytest.MonkeyPatch, fault: dict[str, Any] | None) -> Iterator[None]:
    """Make the Nth Parquet write fail with ``fault['errno']`` (a disk that fills mid-run)."""
    if not fault:
        yield
        return
    real = storage.write_parquet_atomic
    calls = {"n": 0}

    def write(df: pl.DataFrame, path: Path) -> Path:
        calls["n"] += 1
        if calls["n"] == fault["at_write"]:
            code = getattr(errno, fault["errno"])
            raise OSError(code, os.strerror(code), str(path))
        return real(df, path)

    with monkeypatch.context() as patch:
        patch.setattr(storage, "write_parquet_atomic", write)
        yield


def run_cli(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=True)


def stored_pairs(data: Path) -> dict[str, str]:
    parts = sorted((data / storage.EVENTS).glob("event_date=*/part-*.parquet"))
    if not parts:
        return {}
    events = pl.concat([pl.read_parquet(p, columns=["event_id", "user_id"]) for p in parts])
    pairs = dict(events.iter_rows())
    assert len(pairs) == events.height, "an event_id is stored twice"
    return pairs


def rows_in(data: Path, dataset: str) -> int:
    return sum(pl.read_parquet_schema(p) and pl.scan_parquet(p).select(pl.len()).collect().item()
               for p in (data / dataset).glob("event_date=*/part-*.parquet"))


def summaries(data: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((data / "ingest_runs").glob("*.json"))]


# ------------------------------------------------------------------ the replay


# What each case attacks ("kind" in its .expect.json).
KINDS = {
    "record_boundaries": "quoting, line ends and junk that could move where a record starts or forge one",
    "unreadable_values": "values and types that crashed a reader (deep nesting, huge integers, odd Parquet types)",
    "resource_limits": "inputs that inflate in memory or time (wide rows, huge fields, decompression bombs)",
    "value_spelling": "ids, timestamps and categories spelt so that ingest and the API could disagree",
    "file_discovery": "globs and symlinks that read a file twice, loop or leave the drop folder",
}


def test_the_corpus_covers_every_kind_with_30_or_more_cases() -> None:
    names = case_names()
    kinds = {json.loads((CORPUS / f"{n}.expect.json").read_text())["kind"] for n in names}
    assert len(names) >= 30 and kinds == set(KINDS)
    for name in names:  # every case has exactly one input or one recipe
        inputs = [p for p in CORPUS.glob(f"{name}.*") if not p.name.endswith(".expect.json")]
        assert len(inputs) == 1, name
    assert sum(p.stat().st_size for p in CORPUS.iterdir()) < 300_000  # big inputs come from recipes


@pytest.mark.parametrize("name", case_names())
def test_hostile_input(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expect = json.loads((CORPUS / f"{name}.expect.json").read_text())
    work = tmp_path / "work"
    work.mkdir()
    recipe = prepare(name, work)
    data = tmp_path / "data"
    monkeypatch.chdir(work)
    for before in recipe.get("before", []):
        assert run_cli(["ingest", before, "--data-dir", str(data)]).exit_code == 0
    pairs_before = stored_pairs(data)

    with failing_write(monkeypatch, recipe.get("fault")):
        result = run_cli(["ingest", *recipe["inputs"], "--data-dir", str(data), "--json"], env=recipe.get("env"))

    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == expect["exit_code"], output[-2000:]
    runs = summaries(data)[len(recipe.get("before", [])):]
    if expect["exit_code"]:
        (line,) = result.stderr.strip().splitlines()[-1:]
        assert line.startswith("error: ") and expect["error"] in line, result.stderr[-2000:]
        assert "\n" not in result.stderr.strip().split("error: ", 1)[1]
    assert [run["status"] for run in runs] == ([expect["summary"]] if expect["summary"] != "none" else [])
    if runs:
        run = runs[0]
        counts = (run["rows_read"], run["rows_written"], run["rows_quarantined"])
        assert counts == (expect["rows_read"], expect["rows_written"], expect["rows_quarantined"])
        assert run["rows_read"] == run["rows_written"] + run["rows_quarantined"]
        if expect["exit_code"] == 0:
            assert json.loads(result.stdout) == run
        if "ignored_columns" in expect:
            listed = [(len(f["ignored_columns"]), f.get("ignored_columns_truncated", False)) for f in run["files"]]
            assert listed == [tuple(expect["ignored_columns"])], listed

    # nothing lost: what the summaries count is what the parts hold
    every_run = summaries(data)
    assert rows_in(data, storage.EVENTS) == sum(r["rows_written"] for r in every_run)
    assert rows_in(data, storage.QUARANTINE) == sum(r["rows_quarantined"] for r in every_run)
    # nothing forged: exactly the expected events, and what was stored before is still there
    pairs = stored_pairs(data)
    assert pairs_before.items() <= pairs.items()
    if expect.get("stored") is not None:
        assert pairs == expect["stored"]
    else:
        assert len(pairs) == expect["stored_count"]
    if "event_parts" in expect:  # how many parts the run stored its events in
        assert len(list((data / storage.EVENTS).glob("event_date=*/part-*.parquet"))) == expect["event_parts"]
    reasons = (pl.read_parquet(data / storage.QUARANTINE / "*" / "*.parquet")["reason"].to_list()
               if rows_in(data, storage.QUARANTINE) else [])
    for wanted in expect.get("quarantine_reasons", []):
        assert any(wanted in reason for reason in reasons), (wanted, reasons)


def test_the_issue_reproduction_through_the_installed_command(tmp_path: Path) -> None:
    """The issue's exact commands: `uba-batch ingest inj.csv --data-dir D --json` as a subprocess."""
    recipe = prepare("csv_forged_record", tmp_path)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "uba-batch"), "ingest", *recipe["inputs"], "--data-dir", "D", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "UBA_CONFIG": str(
            REPO / "configs" / "default.yaml")})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["rows_read"], summary["rows_written"], summary["rows_quarantined"]) == (4, 2, 2)
    assert stored_pairs(tmp_path / "D") == {"x1": "u00001", "x4": "u00042"}


FORGED_LOG_LINE = "2026-01-01 00:00:00,000 ERROR uba.cli: FORGED"


def test_a_file_name_forges_no_log_or_summary_line_and_sends_no_escape(tmp_path: Path) -> None:
    """A drop folder names its files as it likes: a name holding a line break and an ANSI
    escape went raw into the text log ("batch 1 of <name>", "ignoring columns ..."), so the
    rest of the name stood on a line of its own posing as a log line, and into the printed
    summary's ``inputs:`` list; the escape reached the operator's terminal. Every log line
    and summary line now quotes it escaped (``uba.logs.printable_line``)."""
    drop = tmp_path / "drop"
    drop.mkdir()
    name = f"a\n{FORGED_LOG_LINE}\x1b[2J.csv"
    (drop / name).write_text("event_id,user_id,timestamp,event_type,session_duration_sec,events_in_session,"
                             "device_type,extra\ne1,u1,2026-03-10T10:00:00Z,login,10,1,desktop,z\n")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "uba-batch"), "ingest", str(drop / "*.csv"), "--data-dir", "D"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "UBA_CONFIG": str(
            REPO / "configs" / "default.yaml")})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    for stream in (done.stdout, done.stderr):
        assert "\x1b" not in stream, stream
        assert not any(line.startswith(FORGED_LOG_LINE) for line in stream.splitlines()), stream
    assert f"batch 1 of {drop}/a\\n{FORGED_LOG_LINE}\\x1b[2J.csv: 1 rows" in done.stderr, done.stderr
    assert f"  {drop}/a\\n{FORGED_LOG_LINE}\\x1b[2J.csv (csv): read 1" in done.stdout, done.stdout
