"""``uba-batch``: the group, error handling and command discovery.

Each subcommand lives in ``jobs/commands/<name>.py`` and exposes ``command``; the group
finds them when it runs, so adding a command never means editing this file.
"""

from __future__ import annotations

import errno
import importlib
import pkgutil
import sys
from typing import Any, Literal

import click

from jobs import commands as commands_pkg
from uba.errors import UserError
from uba.logs import configure_logging, get_logger, printable_line


def _undecodable(text: str) -> str | None:
    """The first character of ``text`` that no UTF-8 text holds, as the byte it stood for
    (Python turns an argument's non-UTF-8 byte 0xE9 into U+DCE9), else as U+XXXX."""
    bad = next((c for c in text if 0xD800 <= ord(c) <= 0xDFFF), None)
    if bad is None:
        return None
    return f"the byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"


def _named(args: list[str], index: int) -> tuple[str, str]:
    """(the option an argument is the value of, or "the argument"; the value)."""
    arg = args[index]
    if arg.startswith("--") and "=" in arg:
        name, _, value = arg.partition("=")
        return name, value
    previous = args[index - 1] if index else ""
    return (previous, arg) if previous.startswith("-") and not arg.startswith("-") else ("the argument", arg)


def undecodable_argument(args: list[str]) -> str | None:
    """One line naming the first argument that is not UTF-8 text, or None.

    A note typed in a Latin-1 terminal (``--analyst $'\\xe9ric'``) or a file saved under a
    Latin-1 name reached the command as text no file can store: `alerts ack`, `suppress add`,
    `feedback` and `users import` ended in a UnicodeEncodeError or TypeError traceback
    (found by an attack). Refused before anything runs, naming the option and the byte."""
    for index, arg in enumerate(args):
        found = _undecodable(arg)
        if found is None:
            continue
        name, value = _named(args, index)
        raw = value.encode("utf-8", "surrogateescape" if found.startswith("the byte") else "backslashreplace")
        return (f"{name} '{raw.decode('utf-8', 'backslashreplace')}' holds {found}, which is not UTF-8 text: "
                "set a UTF-8 locale (LANG=C.UTF-8) and type it again, or rename the file; nothing was done")
    return None


class _Group(click.Group):
    """Discovers commands lazily and turns user errors into one line and exit code 1."""

    def _modules(self) -> list[str]:
        return sorted(m.name for m in pkgutil.iter_modules(commands_pkg.__path__))

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = {m.replace("_", "-") for m in self._modules()}
        return sorted(names | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        module_name = cmd_name.replace("-", "_")
        if module_name not in self._modules():
            return None
        module = importlib.import_module(f"jobs.commands.{module_name}")
        return getattr(module, "command", None)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        problem = undecodable_argument(args)
        if problem is not None:
            click.echo(f"error: {problem}", err=True)
            ctx.exit(1)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:  # Any: click.Group.invoke's own return type
        try:
            return super().invoke(ctx)
        except UserError as exc:
            get_logger("cli").debug("user error", exc_info=True)
            # one printable line whatever the message quotes (a file name holding a line
            # break or an escape printed a second line, or rewrote the terminal)
            click.echo(f"error: {printable_line(str(exc))}", err=True)
            sys.exit(1)
        except OSError as exc:  # the filesystem said no (full, read-only, a file in a folder's place)
            if not exc.errno:
                raise
            get_logger("cli").debug("file operation failed", exc_info=True)
            click.echo(f"error: {printable_line(_file_error_line(exc, ctx.invoked_subcommand))}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)


def _file_error_line(exc: OSError, command: str | None) -> str:
    """One line for a file operation the filesystem refused, wherever in a command it
    happened: what the OS said, its errno name and the path. A full disk says so; any
    other refusal (a read-only mount, no permission, a regular file where a folder
    belongs, a folder where a file belongs) adds what to check. Commands catch the
    failures they expect with a line of their own; this is the net below them, so an
    operator never gets a traceback for a disk or mount problem."""
    from uba.io import os_error_reason  # polars: kept out of the CLI's start-up

    reason = os_error_reason(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return str(reason)
    doing = f"uba-batch {command}" if command else "uba-batch"
    return (f"{reason}: a file operation of {doing} failed and it stopped there; check the path (a read-only "
            "or missing mount, its permissions, a file where a folder belongs or the reverse) and run it again")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, envvar="UBA_CONFIG",
              help="YAML settings file (default: configs/default.yaml). Env: UBA_CONFIG.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Log lines on stderr as text for people or JSON for machines.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True)
@click.version_option(package_name="uba")
@click.pass_context
def cli(ctx: click.Context, config: str | None, log_format: Literal["text", "json"], log_level: str) -> None:
    """User behaviour anomaly detection batch jobs.

    \b
    Example:
      uba-batch generate --out data --users 500 --days 21 --start 2026-03-01
      uba-batch train --data-dir data --end-date 2026-03-21
      uba-batch score --date 2026-03-22
    """
    configure_logging(log_format, log_level)
    ctx.obj = {"config": config, "overrides": {}}
