"""`uba-batch suppress add|list|remove`: rules that stop known-benign patterns from alerting."""

from __future__ import annotations

from datetime import date

import click

from jobs.options import DATE, data_dir_option, settings_from

MAX_NOTE_SHOWN = 4000  # twice a note's limit (2,000): `suppress list` shows it whole, escapes included


@click.group(name="suppress")
def command() -> None:
    """Manage suppression rules (user or '*', reason kind or '*', optional expiry).

    A flagged event whose user matches and whose top reason kind matches an active
    rule is still scored and written, with suppressed = true, but is not counted as
    an alert. Rules apply from the next score run; expiry days are inclusive.

    \b
    Example:
      uba-batch suppress add --user u00042 --reason-kind hour --expires 2026-06-30 --note "night shift"
      uba-batch suppress list
      uba-batch suppress remove 3f2a9c1b7d
    """


@command.command(name="add")
@click.option("--user", "user_id", required=True, help="User id, or '*' for every user.")
@click.option("--reason-kind", required=True,
              help="Reason kind to silence (hour, session_length, actions, device, event_type, "
                   "download_intensity, time_of_week, global) or '*'.")
@click.option("--expires", type=DATE, default=None, help="Last day the rule applies (default: never expires).")
@click.option("--note", default=None, help="Why the pattern is benign (shown in `suppress list`).")
@data_dir_option
@click.pass_context
def add(ctx: click.Context, user_id: str, reason_kind: str, expires: date | None, note: str | None,
        data_dir: str | None) -> None:
    """Add a rule and print its id.

    \b
    Example:
      uba-batch suppress add --user '*' --reason-kind device --note "new laptops rolled out"
    """
    from uba.alerting.feedback import add_rule, known_reason_kinds

    settings = settings_from(ctx, data_dir=data_dir)
    rule_id = add_rule(settings.paths.data_dir, user_id, reason_kind, known_reason_kinds(),
                       expires=expires, note=note)
    click.echo(f"added rule {rule_id}: user {user_id}, reason kind {reason_kind}, "
               f"expires {expires.isoformat() if expires else 'never'}")


@command.command(name="list")
@click.option("--all", "show_all", is_flag=True, help="Include expired rules.")
@data_dir_option
@click.pass_context
def list_rules(ctx: click.Context, show_all: bool, data_dir: str | None) -> None:
    """Print the active rules.

    \b
    Example:
      uba-batch suppress list --data-dir data
    """
    from uba.alerting.feedback import listed_rules
    from uba.alerting.transport import one_line

    settings = settings_from(ctx, data_dir=data_dir)
    rules = listed_rules(settings.paths.data_dir, include_expired=show_all)
    if rules.height == 0:
        click.echo("no active rules")
        return
    # one printable line per rule: a note (a triage close's may hold line breaks) or a user
    # id with a line break or an escape printed rows of rules that do not exist
    rows = [(rule["rule_id"], one_line(rule["user_id"] or "", limit=MAX_NOTE_SHOWN), rule["reason_kind"],
             rule["expires"].isoformat() if rule["expires"] else "never",
             one_line(rule["note"] or "", limit=MAX_NOTE_SHOWN)) for rule in rules.iter_rows(named=True)]
    # columns as wide as their longest value: a principal (alice/admin@EXAMPLE.COM) ran into
    # the reason kind at a fixed 16 characters ("...EXAMPLE.COMhour")
    widths = [max(minimum, *(len(row[i]) + 2 for row in rows)) for i, minimum in enumerate((12, 16, 20, 12))]
    click.echo("".join(f"{name:<{width}}" for name, width in zip(("rule_id", "user", "reason kind", "expires"),
                                                                  widths, strict=True)) + "note")
    for row in rows:
        click.echo("".join(f"{value:<{width}}" for value, width in zip(row, widths, strict=False)) + row[4])


@command.command(name="remove")
@click.argument("rule_id")
@data_dir_option
@click.pass_context
def remove(ctx: click.Context, rule_id: str, data_dir: str | None) -> None:
    """Retire a rule (kept in the history as removed).

    \b
    Example:
      uba-batch suppress remove 3f2a9c1b7d --data-dir data
    """
    from uba.alerting.feedback import remove_rule

    settings = settings_from(ctx, data_dir=data_dir)
    remove_rule(settings.paths.data_dir, rule_id)
    click.echo(f"removed rule {rule_id}")
