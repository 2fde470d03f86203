"""Calendar days as users write them: ``YYYY-MM-DD`` and nothing else.

The one rule for every day the product reads from a person or a folder name: CLI options
(``--date``, ``--start``, ``--end``, ``--expires`` ...), the API's ``date`` query and the
``<key>=YYYY-MM-DD`` folders of the storage layout. ``date.fromisoformat`` is not that
rule: since Python 3.11 it also takes the ISO basic form ``20260301`` and week dates
(``2026-W09-7``), which the docs never promised and the folders never hold; pydantic's
``date`` takes datetimes at midnight and Unix seconds. Only the standard library here,
so ``uba-batch --help`` stays fast.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Sequence
from datetime import date, timedelta

FORM = "YYYY-MM-DD"
# ASCII digits only: ``\\d`` also matches other scripts' digits (``٢٠٢٦``).
_DATE_SHAPE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")


class DateFormError(ValueError):
    """A day that is not written as YYYY-MM-DD, or names no real day; the message says which."""


def impossible_date(text: str) -> str | None:
    """Why ``text``, written as YYYY-MM-DD, names no day (None when it does, or is not in that form).

    ``--expires 2026-02-30`` was told it was "not a date in YYYY-MM-DD form", which it is:
    the form is right and the day does not exist, and the user needs to hear which."""
    shape = _DATE_SHAPE.fullmatch(text)
    if shape is None:
        return None
    year, month, day = (int(part) for part in shape.groups())
    if year == 0:
        return "there is no year 0000 (the calendar starts at 0001-01-01)"
    if not 1 <= month <= 12:
        return f"there is no month {month:02d} (months are 01-12)"
    if day == 0:
        return "there is no day 00 (days start at 01)"
    last = calendar.monthrange(year, month)[1]
    return f"{calendar.month_name[month]} {year:04d} has {last} days" if day > last else None


def parse_date(text: str) -> date:
    """The day ``text`` names in YYYY-MM-DD form; a DateFormError quoting it otherwise.

    The message starts with the quoted value, so callers prefix the option or field name."""
    shape = _DATE_SHAPE.fullmatch(text)
    if shape is None:
        raise DateFormError(f"{text!r} is not a date in {FORM} form")
    why = impossible_date(text)
    if why is not None:
        raise DateFormError(f"{text!r} is not a real date: {why}")
    year, month, day = (int(part) for part in shape.groups())
    return date(year, month, day)


def day_ranges(days: Sequence[date], limit: int = 4) -> str:
    """Sorted days as runs (``2026-03-01..2026-03-02, 2026-03-05``), at most ``limit`` of them named."""
    runs: list[list[date]] = []
    for day in days:
        if runs and day - runs[-1][-1] == timedelta(days=1):
            runs[-1].append(day)
        else:
            runs.append([day])
    shown = [str(run[0]) if len(run) == 1 else f"{run[0]}..{run[-1]}" for run in runs[:limit]]
    more = len(runs) - limit
    return ", ".join(shown) + (f" and {more} more run{'s' if more > 1 else ''}" if more > 0 else "")
