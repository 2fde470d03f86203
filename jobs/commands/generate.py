"""`uba-batch generate`: synthetic SaaS activity with personas and labelled anomalies."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

import click

from jobs.options import DATE, settings_from

DEFAULT_START = date(2026, 3, 1)


def _persona_mix(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, float] | None:
    if value is None:
        return None
    from uba.errors import UserError
    from uba.generate import parse_persona_mix

    try:
        return parse_persona_mix(value)
    except UserError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@click.command(name="generate")
@click.option("--out", "--data-dir", "out", type=click.Path(file_okay=False), default=None,
              help="Data directory to write events/ and labels/ into (default: paths.data_dir). "
                   "Env: UBA_DATA_DIR.")
@click.option("--users", type=click.IntRange(1), default=500, show_default=True, help="Number of users.")
@click.option("--days", type=click.IntRange(1, 3660), default=21, show_default=True, help="Number of days.")
@click.option("--start", type=DATE, default=DEFAULT_START, show_default=True, help="First day (UTC).")
@click.option("--anomaly-rate", type=click.FloatRange(0, 0.2), default=0.02, show_default=True,
              help="Share of events that belong to injected event-level anomalies.")
@click.option("--seed", type=click.IntRange(0), default=42, show_default=True,
              help="Random seed; the same options give identical data.")
@click.option("--persona-mix", callback=_persona_mix, default=None, metavar="NAME=W,...",
              help="Population mix, e.g. office=0.5,night=0.2,apac=0.1,power=0.1,light=0.1 "
                   "(weights are normalised; default: the built-in mix).")
@click.option("--erratic-users", type=click.IntRange(0), default=0, show_default=True,
              help="Turn this many random users into naturally noisy ones (wide hours and session "
                   "lengths, no injected anomalies).")
@click.option("--shift-from", type=DATE, default=None,
              help="Drift: from this day on, every session is --session-scale times longer.")
@click.option("--session-scale", type=click.FloatRange(0, 100, min_open=True), default=None,
              help="Session length multiplier used with --shift-from (default 3.0).")
@click.option("--device-shift-from", type=DATE, default=None,
              help="Drift: from this day on, --mobile-shift of the desktop sessions happen on mobile.")
@click.option("--mobile-shift", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Share of desktop sessions moved to mobile by --device-shift-from (default 0.5).")
@click.option("--campaigns", type=click.IntRange(0), default=0, show_default=True,
              help="Plant this many multi-day campaigns (slow exfiltration, takeover, insider drift in "
                   "turn), listed in labels/campaigns.parquet.")
@click.option("--campaigns-from", type=DATE, default=None,
              help="First day a campaign may start (default: the window's last 7 days).")
@click.option("--directory/--no-directory", "with_directory", default=False, show_default=True,
              help="Also store the population's user directory (departments and roles whose habits "
                   "differ, privilege, criticality) as `uba-batch users import` would.")
@click.option("--user-day-anomalies", type=click.IntRange(0), default=0, show_default=True,
              help="Plant this many exfiltration days (user-day anomalies: ~10x the user's usual "
                   "downloads over many small sessions).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Also export the raw events to this CSV file.")
@click.option("--jsonl", "jsonl_path", type=click.Path(dir_okay=False), default=None,
              help="Also export the raw events to this JSON Lines file.")
@click.pass_context
def command(ctx: click.Context, out: str | None, users: int, days: int, start: date, anomaly_rate: float,
            seed: int, persona_mix: dict[str, float] | None, erratic_users: int, shift_from: date | None,
            session_scale: float | None, device_shift_from: date | None, mobile_shift: float | None,
            campaigns: int, campaigns_from: date | None, with_directory: bool, user_day_anomalies: int, csv_path: str | None,
            jsonl_path: str | None) -> None:
    """Generate realistic SaaS activity and write it like an ingest would.

    Every user has a persona (office, night shift, APAC, weekend, power, light) and
    their own hours, session lengths, activity rate, device and event-type habits.
    About --anomaly-rate of the events belong to labelled anomalies, mostly contextual
    (normal for the population, abnormal for that user). Events go through the ingest
    writer into events/; labels go to labels/labels.parquet and the users' personas to
    labels/users.parquet, never into events/. See docs/synthetic-data.md.

    \b
    Example:
      uba-batch generate --out data --users 500 --days 21 --start 2026-03-01 --seed 7
      uba-batch generate --out data2 --days 22 --shift-from 2026-03-22 --session-scale 3
      uba-batch generate --out data4 --days 28 --device-shift-from 2026-03-22 --mobile-shift 0.5
      uba-batch generate --out data5 --users 500 --days 28 --campaigns 12 --campaigns-from 2026-03-22
      uba-batch generate --out data3 --persona-mix office=0.3,night=0.4,light=0.3 --csv ev.csv
    """
    from uba.errors import UserError
    from uba.generate import DEFAULT_MOBILE_SHIFT, GenerationOptions
    from uba.generate.store import export_events, write_generated

    if session_scale is not None and shift_from is None:
        raise UserError("--session-scale only applies together with --shift-from")
    if campaigns_from is not None and not campaigns:
        raise UserError("--campaigns-from only applies together with --campaigns")
    if mobile_shift is not None and device_shift_from is None:
        raise UserError("--mobile-shift only applies together with --device-shift-from")
    settings = settings_from(ctx, data_dir=out)
    options = GenerationOptions(
        users=users, days=days, start=start, anomaly_rate=anomaly_rate, seed=seed,
        persona_mix=persona_mix, erratic_users=erratic_users, shift_from=shift_from,
        session_scale=3.0 if session_scale is None else session_scale,
        user_day_anomalies=user_day_anomalies, device_shift_from=device_shift_from,
        mobile_shift=DEFAULT_MOBILE_SHIFT if mobile_shift is None else mobile_shift,
        campaigns=campaigns, campaigns_from=campaigns_from,
    )
    result = write_generated(options, Path(settings.paths.data_dir), settings, with_directory=with_directory)
    for line in result.summary_lines():
        click.echo(line)
    exports: tuple[tuple[str | None, Literal["csv", "jsonl"]], ...] = ((csv_path, "csv"), (jsonl_path, "jsonl"))
    for path, fmt in exports:
        if path:
            export_events(result.data.events, Path(path), fmt)
            click.echo(f"exported {result.data.events.height} raw events to {path} ({fmt})")
