"""What ``score`` and ``backfill`` do end to end, as the lines an operator reads.

Scoring (``driver``, ``backfill``) publishes days; these functions add what a scheduled
job does around it: the alerting sinks checked before any scoring, the day's alerts
enqueued and delivered once it is published, the drift verdict and the exit code. The
commands only parse their options, call one of them and print what it yields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date
from typing import TYPE_CHECKING, NamedTuple

from uba.logs import get_logger, printable_line
from uba.monitoring.drift import drift_verdict
from uba.scoring.backfill import (
    BackfillDelivery,
    BackfillOutcome,
    backfill_dates,
    describe_manifest,
    outcome_counts,
)
from uba.scoring.driver import ScoreOptions, score_day
from uba.settings import Settings

if TYPE_CHECKING:
    from uba.alerting.delivery import ReadySink

log = get_logger("nightly")

# Drives a walk over the dates (a progress bar, log lines) and returns its outcomes.
ShowWalk = Callable[[Iterator[BackfillOutcome], int], list[BackfillOutcome]]


class Line(NamedTuple):
    """One line for the operator: to stderr when ``err``; a non-zero ``exit_code`` is the
    code the command ends with."""

    text: str
    err: bool = False
    exit_code: int = 0


def score_and_deliver(settings: Settings, options: ScoreOptions) -> Iterator[Line]:
    """``score``: score ``options.day``, then deliver its alerts and judge its drift.

    A generator, so the command prints that the day was published before delivery
    starts (a delivery that fails leaves that line on the screen). A misconfigured sink
    fails before any scoring. Heavy drift ends with exit code 3 only when
    ``monitoring.fail_on_drift`` asks for it.
    """
    sinks = _prepared_sinks(settings)
    manifest = score_day(settings, options)
    yield Line(f"scored {options.day}: {describe_manifest(manifest)}, model {manifest['model']['version']} "
               f"-> {manifest['outputs']['scores']['path']}")
    if sinks:
        from uba.alerting.delivery import deliver_scored_day

        for text in deliver_scored_day(settings, sinks, options.day, manifest["run_id"]):
            yield Line(text)
    yield from _compact_tables(settings)
    verdict, code = drift_verdict(manifest, settings)
    yield Line(verdict, err=code != 0, exit_code=code)


def backfill_and_deliver(settings: Settings, start: date, end: date, options: ScoreOptions, force: bool,
                         show: ShowWalk) -> list[Line]:
    """``backfill``: score ``start..end`` (``backfill_dates``), each published day's alerts
    enqueued on the way and delivered at the end, then a summary; exit code 1 if a date failed.

    ``show`` consumes the walk (the command's progress display). A misconfigured sink
    fails before any scoring.
    """
    delivery = BackfillDelivery(settings, _prepared_sinks(settings))
    outcomes = show(delivery.follow(backfill_dates(settings, start, end, options, force=force)),
                    (end - start).days + 1)
    lines = [Line(text) for text in delivery.finish()]
    lines += _compact_tables(settings)
    counts = outcome_counts(outcomes)
    lines.append(Line(f"backfill: {counts['scored']} scored, {counts['skipped']} skipped, "
                      f"{counts['failed']} failed of {len(outcomes)} dates"))
    lines += _in_sample_note(outcomes)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        lines.append(Line("error: failed dates: " + ", ".join(str(o.day) for o in failed), err=True, exit_code=1))
    return lines


def _in_sample_note(outcomes: list[BackfillOutcome]) -> list[Line]:
    """The dates of the walk its model was trained on, once more under the summary (each
    also warned as it was scored, which a long walk's lines bury): re-scoring last week
    after the weekly retrain scores it in-sample, with fewer alerts."""
    in_sample = [(o.day, o.manifest["model"]["version"]) for o in outcomes
                 if o.manifest is not None and o.manifest["model"].get("in_training_window")]
    if not in_sample:
        return []
    return [Line(f"warning: {len(in_sample)} date(s) lie inside the training window of model {in_sample[0][1]} and "
                 "were scored in-sample (the model saw their events: lower scores, fewer alerts than unseen days): "
                 + ", ".join(str(day) for day, _ in in_sample), err=True)]


def _compact_tables(settings: Settings) -> list[Line]:
    """The analysts' tables that reached ``scoring.compact_tables_after_parts`` parts,
    merged once the day is out (``uba.alerting.compaction``). Housekeeping: a table an
    analyst is appending to is left for the next run, and a failure is a warning, never
    the run's failure (its outputs are already published)."""
    threshold = settings.scoring.compact_tables_after_parts
    if threshold <= 0:
        return []
    from uba.alerting.compaction import TABLES, compact_table_apart

    lines = []
    for table in TABLES:
        try:  # in a child process: a crash of the merge must not end a published run (exit 134)
            done = compact_table_apart(settings.paths.data_dir, table, min_parts=threshold)
        except Exception as exc:  # housekeeping after publishing: whatever it is, not the run's failure
            log.debug("compaction of %s failed", table, exc_info=True)
            lines.append(Line(f"warning: compacting the {table} table failed, nothing lost (it is read as it was); "
                              f"`uba-batch tables compact --table {table}` says why: {printable_line(str(exc))}",
                              err=True))
            continue
        if done.merged:
            lines.append(Line(f"compacted {done.line()}"))
        elif done.leftovers_removed:
            lines.append(Line(done.line()))
    return lines


def _prepared_sinks(settings: Settings) -> list[ReadySink]:
    """``prepare_sinks``, when sinks are configured: without any, alert delivery (its
    ledger, HTTP and TLS modules, ~25 ms of every run's start) is never loaded."""
    if not settings.alerting.sinks:
        return []
    from uba.alerting.delivery import prepare_sinks

    return prepare_sinks(settings)
