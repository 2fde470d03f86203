"""`uba-batch verify`: check stored events and aggregates against their checksums;
``--adopt-legacy`` records checksums for the partitions read unverified."""

from __future__ import annotations

import json

import click

from jobs.options import data_dir_option, settings_from


@click.command(name="verify")
@click.option("--adopt-legacy", is_flag=True,
              help="Record the sha256 of every part of the partitions that have none (written before "
                   "checksum manifests, or whose manifests and marker were all deleted), after checking "
                   "they read. Only for data you trust as it is now.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@data_dir_option
@click.pass_context
def command(ctx: click.Context, adopt_legacy: bool, as_json: bool, data_dir: str | None) -> None:
    """Check every events and aggregates part of the data directory against its checksum
    manifest, and list the partitions that are read unverified (no checksum known).

    Exit 1 with one line when a partition fails (a changed, missing or extra part, a
    deleted manifest). Score runs warn about unverified inputs and record them in the
    run manifest (``inputs.unverified_partitions``); nothing makes them verified except
    ``--adopt-legacy``, the operator's statement that the data as it is now is right.

    \b
    Example:
      uba-batch verify --data-dir data
      uba-batch verify --data-dir data --adopt-legacy
    """
    from uba import io
    from uba.errors import UserError

    root = settings_from(ctx, data_dir=data_dir).paths.data_dir
    report = io.verify_and_adopt(root, adopt_legacy)
    adopted = report["adopted"]
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for line in report["corrupt"]:
            click.echo(f"corrupt: {line}")
        for name in report["unverified"]:
            click.echo(f"unverified: {name}")
        for name in adopted:
            click.echo(f"adopted: {name}")
        click.echo(f"verify {root}: {len(report['verified'])} partition(s) verified, "
                   f"{len(report['unverified'])} unverified, {len(report['corrupt'])} failed"
                   + (f", {len(adopted)} adopted" if adopt_legacy else ""))
    if report["corrupt"]:
        more = f" (and {len(report['corrupt']) - 1} more)" if len(report["corrupt"]) > 1 else ""
        raise UserError(f"{len(report['corrupt'])} partition(s) of {root} failed verification: "
                        f"{report['corrupt'][0]}{more}")
