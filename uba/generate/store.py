"""Storing a generated run: events through the ingest writer, labels beside them.

Labels and personas are the answers of the exam, so they live in ``<data-dir>/labels/``
and never in ``events/``: training and scoring read ``events/`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from uba import io
from uba.directory import ImportSummary, store_directory_frame
from uba.errors import UserError
from uba.generate import ANOMALY_KINDS, GenerationOptions, SyntheticData, generate_dataset
from uba.ingest.files import IngestSummary, ingest_frame
from uba.logs import get_logger
from uba.schema import RAW_FIELDS
from uba.settings import Settings

LABELS_FILE = "labels.parquet"
USERS_FILE = "users.parquet"
CAMPAIGNS_FILE = "campaigns.parquet"
# Columns that identify a user's persona: a stored user must match the new run on these.
_USER_IDENTITY = ("persona", "hour_centre", "session_median_sec")

log = get_logger(__name__)


def labels_path(data_dir: Path) -> Path:
    return Path(data_dir) / io.LABELS / LABELS_FILE


def users_path(data_dir: Path) -> Path:
    return Path(data_dir) / io.LABELS / USERS_FILE


def campaigns_path(data_dir: Path) -> Path:
    return Path(data_dir) / io.LABELS / CAMPAIGNS_FILE


def merge_campaigns(stored: pl.DataFrame | None, new: pl.DataFrame) -> pl.DataFrame:
    """Stored campaigns plus the new run's; the same campaign generated again is one row."""
    both = new if stored is None else pl.concat([stored, new], how="vertical_relaxed")
    return both.unique(maintain_order=True).sort("start", "user_id", "kind")


def merge_labels(stored: pl.DataFrame | None, new: pl.DataFrame) -> pl.DataFrame:
    """Stored labels plus the new run's (an event already labelled keeps its label, so
    re-running the same generation changes nothing)."""
    if stored is None:
        return new
    if stored.schema != new.schema:
        raise UserError(
            f"stored labels have columns {list(stored.schema)}, this version writes {list(new.schema)}; "
            "generate into a fresh --out"
        )
    return pl.concat([stored, new]).unique("event_id", keep="first", maintain_order=True)


def merge_users(stored: pl.DataFrame | None, new: pl.DataFrame) -> pl.DataFrame:
    """Union of the users files; the same user id with another persona means the directory
    holds a different population (other seed or mix), which would corrupt the labels."""
    if stored is None:
        return new
    both = stored.join(new, on="user_id", suffix="_new")
    differs = pl.any_horizontal(pl.col(c) != pl.col(f"{c}_new") for c in _USER_IDENTITY)
    conflicts = both.filter(differs)
    if conflicts.height:
        example = conflicts.row(0, named=True)
        raise UserError(
            f"the data directory already holds user {example['user_id']} as persona "
            f"{example['persona']!r} from another generation (other --seed, --users or --persona-mix); "
            "generate into a fresh --out"
        )
    return pl.concat([stored, new.join(stored, on="user_id", how="anti")], how="vertical_relaxed")


@dataclass(frozen=True)
class GenerateResult:
    """What a generate run produced and where it went."""

    data: SyntheticData
    ingest: IngestSummary
    labels_path: Path
    users_path: Path
    directory: ImportSummary | None = None  # when the directory was stored

    def kind_counts(self) -> pl.DataFrame:
        """Anomalous events and sessions per kind, in the documented kind order."""
        counts = (
            self.data.labels.filter(pl.col("is_anomaly"))
            .group_by("kind")
            .agg(pl.len().alias("events"), pl.col("session_id").n_unique().alias("sessions"))
        )
        order = pl.DataFrame({"kind": list(ANOMALY_KINDS)})
        return order.join(counts, on="kind", how="inner", maintain_order="left")

    def summary_lines(self) -> list[str]:
        """The short report the CLI prints."""
        o, events, labels = self.data.options, self.data.events, self.data.labels
        anomalous = int(labels["is_anomaly"].sum())
        lines = [
            f"generated {events.height:,} events for {o.users:,} users over {o.days} days "
            f"({o.start.isoformat()}..{o.last.isoformat()}), seed {o.seed}",
            f"anomalous events: {anomalous:,} ({anomalous / max(events.height, 1):.2%})",
        ]
        for row in self.kind_counts().iter_rows(named=True):
            lines.append(f"  {row['kind']:<17} {row['events']:>8,} events {row['sessions']:>6,} sessions")
        s = self.ingest
        lines.append(f"ingest: read {s.rows_read:,}, written {s.rows_written:,}, quarantined {s.rows_quarantined:,}"
                     + (f" {dict(s.reasons)}" if s.rows_quarantined else ""))
        if self.data.campaigns.height:
            kinds = self.data.campaigns.group_by("kind").len().sort("kind")
            lines.append(f"campaigns: {self.data.campaigns.height} ("
                         + ", ".join(f"{r['kind']} {r['len']}" for r in kinds.iter_rows(named=True))
                         + f"), listed in {campaigns_path(self.labels_path.parent.parent)}")
        if self.directory is not None:
            lines.append(f"directory: {self.directory.rows_stored} users ({self.directory.path})")
        lines.append(f"labels: {self.labels_path}; users: {self.users_path}")
        return lines


def write_generated(options: GenerationOptions, data_dir: Path, settings: Settings,
                    with_directory: bool = False) -> GenerateResult:
    """Generate, then write labels and users (first, so events never exist without their
    labels), then the events through the one ingest writer."""
    data = generate_dataset(options)
    labels_file, users_file = labels_path(data_dir), users_path(data_dir)
    labels = merge_labels(io.read_parquet_if_exists(labels_file), data.labels)
    users = merge_users(io.read_parquet_if_exists(users_file), data.users)
    io.write_parquet_atomic(labels, labels_file)
    io.write_parquet_atomic(users, users_file)
    if data.campaigns.height or campaigns_path(data_dir).exists():
        stored = io.read_parquet_if_exists(campaigns_path(data_dir))
        io.write_parquet_atomic(merge_campaigns(stored, data.campaigns), campaigns_path(data_dir))
    if with_directory and data.directory is not None:
        directory = store_directory_frame(data_dir, data.directory, source="generate",
                                          max_id_length=settings.events.max_string_length)
    else:
        directory = None
    summary = ingest_frame(data.events, Path(data_dir), settings, source="generate")
    log.info("generated run stored", extra={"fields": {"events": data.events.height, "data_dir": str(data_dir)}})
    return GenerateResult(data=data, ingest=summary, labels_path=labels_file, users_path=users_file,
                          directory=directory)


def raw_export_frame(events: pl.DataFrame) -> pl.DataFrame:
    """Events as an outside system would send them: raw fields, ISO-8601 'Z' timestamps."""
    return events.select(RAW_FIELDS).with_columns(
        pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
    )


def export_events(events: pl.DataFrame, path: Path, fmt: Literal["csv", "jsonl"]) -> Path:
    """Write the raw events as CSV or JSON Lines, e.g. to test ingest of the same events."""
    frame = raw_export_frame(events)
    if fmt == "csv":
        return io.write_csv_atomic(frame, path)
    return io.write_jsonl_atomic(frame, path)
