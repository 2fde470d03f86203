"""Headless Chromium for tests of self-contained HTML pages (the daily report).

Chromium is Debian's package (``.ci/run`` installs it). It runs with no network
(every host name resolves to nothing), a throwaway profile and console logging on
stderr, so a test sees both the rendered DOM and every console message the page caused.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CONSOLE_LINE = re.compile(r":CONSOLE[:(]")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
)


@dataclass(frozen=True)
class Rendered:
    dom: str
    console: list[str]


def available() -> bool:
    return Path(CHROMIUM).is_file()


def _run(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=90, check=False,
    )


def render(page: Path, workdir: Path, *extra: str) -> Rendered:
    """The DOM after load and the console messages (errors, failed loads) it produced;
    ``extra`` flags such as ``--window-size=1400,900`` for a page that measures its layout."""
    result = _run(page, workdir / "profile-dom", "--dump-dom", *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if CONSOLE_LINE.search(line)]
    return Rendered(dom=result.stdout, console=console)


def screenshot(page: Path, workdir: Path, target: Path, width: int = 1100, height: int = 1500) -> Path:
    """A PNG of the page as a person would see it at this window size."""
    result = _run(page, workdir / "profile-shot", f"--screenshot={target}", f"--window-size={width},{height}",
                  "--hide-scrollbars")
    assert result.returncode == 0 and target.is_file(), result.stderr[-2000:]
    return target
