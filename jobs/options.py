"""Options shared by several commands, and the bridge from flags to settings."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import click

from uba.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def _flag(*decls: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*decls, **kwargs)


data_dir_option = _flag("--data-dir", type=click.Path(file_okay=False), default=None,
                        help="Data directory (events/, quarantine/, aggregates/). Env: UBA_DATA_DIR.")
model_dir_option = _flag("--model-dir", type=click.Path(file_okay=False), default=None,
                         help="Model bundle directory. Env: UBA_MODEL_DIR.")
output_dir_option = _flag("--output-dir", type=click.Path(file_okay=False), default=None,
                          help="Output directory (scores/, flagged/, runs/). Env: UBA_OUTPUT_DIR.")


class DateType(click.ParamType):
    """A calendar date as YYYY-MM-DD; anything else is a one-line usage error."""

    name = "YYYY-MM-DD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> date:
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a date in YYYY-MM-DD form", param, ctx)


DATE = DateType()


def settings_from(ctx: click.Context, **paths: Any) -> Settings:
    """Settings for a command: the group's --config, env, then this command's path flags."""
    overrides: dict[str, dict[str, Any]] = {"paths": {k: v for k, v in paths.items() if v is not None}}
    extra = ctx.find_root().obj or {}
    for section, values in extra.get("overrides", {}).items():
        overrides.setdefault(section, {}).update(values)
    return load_settings(extra.get("config"), overrides=overrides)


def yesterday_utc(now: datetime | None = None) -> date:
    """The default day for nightly jobs: the last complete day in UTC (``now`` is the
    clock's reading, any time zone; the current time unless given)."""
    return (now or datetime.now(UTC)).astimezone(UTC).date() - timedelta(days=1)
