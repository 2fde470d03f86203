"""The generate-then-ingest round trip through the real CLI: generated events exported as CSV and as JSONL,
each ingested like real logs, give partitions identical to each other and to `generate`'s own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

UBA = str(Path(sys.executable).with_name("uba-batch"))


def _uba(*args: str) -> str:
    result = subprocess.run([UBA, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _partitions(data_dir: Path) -> dict[str, pl.DataFrame]:
    events = data_dir / "events"
    return {p.name: pl.read_parquet(str(p / "*.parquet")).sort("event_id") for p in sorted(events.iterdir())}


def test_csv_and_jsonl_exports_ingest_to_identical_partitions(tmp_path: Path) -> None:
    generated, csv, jsonl = tmp_path / "gen", tmp_path / "events.csv", tmp_path / "events.jsonl"
    _uba("generate", "--out", str(generated), "--users", "40", "--days", "3", "--start", "2026-03-02",
         "--seed", "4", "--csv", str(csv), "--jsonl", str(jsonl))
    from_csv, from_jsonl = tmp_path / "from-csv", tmp_path / "from-jsonl"
    assert "quarantined 0" in _uba("ingest", str(csv), "--data-dir", str(from_csv)).replace(",", "")
    assert "quarantined 0" in _uba("ingest", str(jsonl), "--data-dir", str(from_jsonl)).replace(",", "")

    reference = _partitions(generated)
    assert list(reference) == [f"event_date=2026-03-0{d}" for d in (2, 3, 4)]
    for other in (_partitions(from_csv), _partitions(from_jsonl)):
        assert list(other) == list(reference)
        for name, frame in reference.items():
            assert_frame_equal(other[name], frame)
