"""Options shared by several commands, and the bridge from flags to settings."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click

from uba.dates import DateFormError, parse_date

if TYPE_CHECKING:  # uba.settings (pydantic, and Polars through uba.event_rules) loads in settings_from
    from uba.settings import Settings

F = TypeVar("F", bound=Callable[..., object])


def _flag(*decls: str, **kwargs: Any) -> Callable[[F], F]:  # click.option's own keywords are Any
    return click.option(*decls, **kwargs)


data_dir_option = _flag("--data-dir", type=click.Path(file_okay=False), default=None,
                        help="Data directory (events/, quarantine/, aggregates/). Env: UBA_DATA_DIR.")
model_dir_option = _flag("--model-dir", type=click.Path(file_okay=False), default=None,
                         help="Model bundle directory. Env: UBA_MODEL_DIR.")
output_dir_option = _flag("--output-dir", type=click.Path(file_okay=False), default=None,
                          help="Output directory (scores/, flagged/, runs/). Env: UBA_OUTPUT_DIR.")


class DateType(click.ParamType):  # type: ignore[type-arg]  # click < 8.5 (the pin allows 8.1) is not subscriptable
    """A calendar date as YYYY-MM-DD (``uba.dates``, the one rule); anything else is a
    one-line usage error. ``20260301`` is refused: ``date.fromisoformat`` took it."""

    name = "YYYY-MM-DD"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> date:
        if isinstance(value, date):
            return value
        try:
            return parse_date(str(value))
        except DateFormError as exc:
            self.fail(str(exc), param, ctx)


DATE = DateType()


def settings_from(ctx: click.Context, **paths: str | None) -> Settings:
    """Settings for a command: the group's --config, env, then this command's path flags.

    Imported here, not with the module: every command module imports this one, and
    ``uba-batch --help`` (which imports them all) took 0.9 s with it, 0.2 s without."""
    from uba.settings import load_settings

    overrides: dict[str, dict[str, object]] = {"paths": {k: v for k, v in paths.items() if v is not None}}
    extra = ctx.find_root().obj or {}
    for section, values in extra.get("overrides", {}).items():
        overrides.setdefault(section, {}).update(values)
    return load_settings(extra.get("config"), overrides=overrides)


def yesterday_utc(now: datetime | None = None) -> date:
    """The default day for nightly jobs: the last complete day in UTC (``now`` is the
    clock's reading, any time zone; the current time unless given)."""
    return (now or datetime.now(UTC)).astimezone(UTC).date() - timedelta(days=1)


def ray_options(func: F) -> F:
    """Options of ``score`` and ``backfill``: where the model runs and how the work is split."""
    decorators = [
        click.option("--ray-address", default=None, envvar="RAY_ADDRESS", metavar="ADDR",
                     help="Join an existing Ray cluster ('auto' = the cluster this process runs in, "
                          "or host:port). Default: start an embedded local Ray. Env: RAY_ADDRESS."),
        click.option("--workers", type=click.IntRange(1, 1024), default=None,
                     help="Concurrent scoring tasks (default: ray.num_workers; all CPUs of a joined cluster)."),
        click.option("--shards", type=click.IntRange(1, 100_000), default=None, hidden=True,
                     help="Ignored (kept so old scripts still run): shards are planned from the "
                          "data, scoring.chunk_rows events each, so outputs never depend on it."),
        click.option("--in-process", is_flag=True, default=False,
                     help="Score in this process without Ray (same results, for small days and debugging)."),
        click.option("--model-version", default=None, metavar="VERSION",
                     help="Model bundle version to use (default: the LATEST one in --model-dir)."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func
