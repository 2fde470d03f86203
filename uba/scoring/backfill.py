"""``backfill --start A --end B``: score a range of dates in order with one model.

The model version is resolved once at the start, so a model trained while a backfill
runs cannot leave the range half scored by one version and half by another. A date
whose published manifest already names that version is skipped (``force`` re-scores
it). One Ray runtime serves the whole range. A failing date is reported and the walk
goes on with the next one; the caller turns any failure into a non-zero exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import date
from typing import TYPE_CHECKING, Literal

from uba import io
from uba.errors import UserError
from uba.features.pipeline import date_range, load_scoring_bundle
from uba.manifest import RunManifest, events_changed, lookback_changed, read_manifest, scored_with
from uba.scoring.driver import ScoreOptions, open_runtime, score_day
from uba.settings import Settings

if TYPE_CHECKING:  # delivery (sqlite, HTTP, TLS) is loaded only where sinks are configured
    from uba.alerting.delivery import ReadySink

Status = Literal["scored", "skipped", "failed"]


@dataclass(frozen=True)
class BackfillOutcome:
    """What happened to one date of the range."""

    day: date
    status: Status
    detail: str
    manifest: RunManifest | None = None


def describe_manifest(manifest: RunManifest) -> str:
    """A one-line summary of a finished run, for logs and the CLI."""
    counts = manifest["counts"]
    execution = manifest["execution"]
    return (f"{counts['scored_rows']:,} events, {counts['flagged_rows']:,} flagged, "
            f"{execution['mode']} x{execution.get('workers', 1)}, {manifest['duration_sec']:.1f} s")


def backfill_dates(settings: Settings, start: date, end: date, options: ScoreOptions,
                   force: bool = False) -> Iterator[BackfillOutcome]:
    """Score every date of ``[start, end]`` in order, yielding one outcome per date.

    ``options.day`` is ignored (each date of the range replaces it). Iterate to the end
    (or close the generator) so the Ray runtime it may have started is shut down.
    """
    days = date_range(start, end)
    bundle = load_scoring_bundle(settings, options.model_version)
    runtime = open_runtime(settings, options)
    try:
        for day in days:
            why = ""
            if not force and scored_with(settings.paths.output_dir, day, bundle.version):
                changed = _late_events(settings, day)
                if changed is None:
                    yield BackfillOutcome(day, "skipped", f"already scored with model {bundle.version}")
                    continue
                why = f" (re-scored: {changed})"
            try:
                manifest = score_day(settings, replace(options, day=day), runtime=runtime, bundle=bundle)
            except UserError as exc:
                yield BackfillOutcome(day, "failed", str(exc))
                continue
            except OSError as exc:  # a day's folder the job may not list: that day fails, the walk goes on
                if not exc.errno:
                    raise
                yield BackfillOutcome(day, "failed", str(io.os_error_reason(exc)))
                continue
            yield BackfillOutcome(day, "scored", describe_manifest(manifest) + why, manifest)
    finally:
        runtime.close()


def _late_events(settings: Settings, day: date) -> str | None:
    """Why a day scored with the backfill's model must be scored again: its events changed
    since (late events ingested after it was scored; ``manifest.events_changed``), or those
    of its baselines' lookback did (``manifest.lookback_changed``)."""
    manifest = read_manifest(settings.paths.output_dir, day)
    if manifest is None:
        return None
    return (events_changed(manifest, settings.paths.data_dir, day)
            or lookback_changed(manifest, settings.paths.data_dir))


def outcome_counts(outcomes: list[BackfillOutcome]) -> dict[Status, int]:
    """How many dates were scored, skipped and failed."""
    return {s: sum(o.status == s for o in outcomes) for s in ("scored", "skipped", "failed")}


@dataclass
class BackfillDelivery:
    """Alert delivery for a backfill: each day is enqueued as soon as it is published
    (before any send), so a backfill killed later loses none of its alerts, and all of
    them are delivered once at the end, in day order."""

    settings: Settings
    sinks: list[ReadySink]
    published: dict[tuple[date, str], dict[str, int]] = field(default_factory=dict)

    def follow(self, walk: Iterator[BackfillOutcome]) -> Iterator[BackfillOutcome]:
        """The walk unchanged, enqueueing each scored day's alerts on the way."""
        for outcome in walk:
            if self.sinks and outcome.status == "scored" and outcome.manifest is not None:
                from uba.alerting.delivery import enqueue_day

                self.published[(outcome.day, outcome.manifest["run_id"])] = enqueue_day(
                    self.settings, self.sinks, outcome.day)
            yield outcome

    def finish(self) -> list[str]:
        """Catch up days whose own enqueue was interrupted (a kill right after publishing),
        then deliver within alerting.deliver_budget_sec; returns the operator's lines."""
        if not self.sinks:
            return []
        from uba.alerting.delivery import catch_up, deliver_published

        catch_up(self.settings, self.sinks)
        if not self.published:
            return []
        return deliver_published(self.settings, self.sinks, self.published)
