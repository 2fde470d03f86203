"""The run record of one scored date: what went in, what came out, how it ran.

``runs/event_date=D/manifest.json`` describes the output currently published for D. It
is written into the run's version folder with the outputs (``<out>/.days/event_date=D/
<run id>/manifest.json``) and becomes visible with them in the one rename that publishes
the day (``uba.io.commit_day_version``), so the manifest a reader sees always describes
the files it sees. A failed run never touches it: its record goes to
``runs/event_date=D/failed-<UTC timestamp>.json`` and the previous good output and
manifest stay as they were.
"""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path
from typing import Any

from uba import io
from uba.errors import UserError
from uba.locks import RunLockedError, date_lock

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
SUCCEEDED = "succeeded"
FAILED = "failed"


def failure_path(output_dir: Path, day: date, at: float | None = None) -> Path:
    """A failed run's record; one file per failure, so none overwrites another or the manifest."""
    at = time.time() if at is None else at
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(at)) + f"{int(at * 1e6) % 1_000_000:06d}Z"
    return io.partition_dir(Path(output_dir), io.RUNS, day) / f"failed-{stamp}.json"


def scored_with(output_dir: Path, day: date, model_version: str) -> bool:
    """True when ``day`` has a complete output made by ``model_version`` whose entity risk is
    not marked stale (backfill skips it; a stale day is re-scored, which clears the mark).

    An unreadable manifest, or a day whose links were made by hand (naming another day's
    version), counts as not scored: backfill then re-scores the day, and score refuses a
    foreign layout with its reason.
    """
    try:
        manifest = io.read_run_manifest(Path(output_dir), day)
    except UserError:
        return False
    return bool(manifest and manifest.get("status") == SUCCEEDED
                and manifest.get("model", {}).get("version") == model_version
                and not manifest.get("risk_stale"))


def row_conservation(input_rows: int, scored_rows: int, quarantined_rows: int) -> dict[str, Any]:
    """Every validated event of the day is scored exactly once; quarantined rows are the
    ones ingest rejected, so received = input + quarantined."""
    return {
        "input_rows": input_rows,
        "scored_rows": scored_rows,
        "quarantined_rows": quarantined_rows,
        "received_rows": input_rows + quarantined_rows,
        "ok": input_rows == scored_rows,
    }


def utc_iso(at: float) -> str:
    """Seconds since the epoch as an ISO-8601 UTC timestamp with milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


def amend_published(output_dir: Path, day: date, run_id: str, key: str, value: Any) -> bool:
    """Set ``key`` of the published manifest of ``day`` to ``value`` after the run (the
    delivery counts known only once the day is published and its alerts sent).

    Written atomically into the run's own version folder, under the date's lock and only
    while that run is still the published one: a newer run of the day is never given an
    older run's figures. Returns False (and changes nothing) when another run holds the
    date, when ``run_id`` is no longer published, or for a day in the layout before versions.
    """
    output_dir = Path(output_dir)
    try:
        with date_lock(output_dir, day):
            if io.published_version(output_dir, day) != run_id:
                return False
            path = io.day_versions_dir(output_dir, day) / run_id / MANIFEST_NAME
            record = io.read_json(path)
            if not isinstance(record, dict) or record.get("run_id") != run_id:
                return False
            record[key] = value
            io.write_json_atomic(record, path, durable=True)
            return True
    except RunLockedError:
        return False
