"""Command blocks of README.md and docs/*.md marked runnable, run on a fresh demo world.

A block is runnable when the line before its opening fence is ``<!-- runnable ... -->``.
Every runnable block of a file runs, in order, in one bash (``set -e``, the project's
.venv on the PATH) in a folder where ``scripts/demo.sh`` just ran, as a reader following
the README would. The example answers in a block's comments must be real: every quoted
sentence in them (a reason, 20+ characters) must appear in what the commands printed.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from waiting import documented_port

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- runnable"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def runnable_blocks(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.startswith("```bash") and i and lines[i - 1].startswith(MARKER):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            blocks.append("\n".join(lines[i + 1:end]))
    return blocks


def quoted_examples(block: str) -> list[str]:
    """The sentences quoted in the block's example output (comment lines)."""
    comments = "\n".join(line for line in block.splitlines() if line.lstrip().startswith("#"))
    return [s for s in re.findall(r'"([^"]{20,})"', comments) if not s.startswith("...")]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UBA_", "RAY_ADDRESS"))}
    return {**env, "PATH": f"{REPO / '.venv' / 'bin'}:{env['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="module")
def demo_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    world = tmp_path_factory.mktemp("docs-world")
    made = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], cwd=world, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    return world


def test_the_readme_has_runnable_blocks() -> None:
    assert runnable_blocks(REPO / "README.md"), "the README's API walk-through is marked runnable"


@pytest.mark.parametrize("doc", [d for d in DOCS if runnable_blocks(d)], ids=lambda d: d.name)
def test_runnable_blocks_run_as_written(doc: Path, demo_world: Path) -> None:
    blocks = runnable_blocks(doc)
    script = "set -e\n" + "\n".join(blocks) + "\nkill $(jobs -p) 2>/dev/null || true\nwait\n"
    with documented_port():
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", 8000)) == 0:
                pytest.skip("port 8000 is taken: the documented API commands listen there")
        ran = subprocess.run(["bash", "-c", script], cwd=demo_world, env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "Traceback" not in ran.stderr, ran.stderr[-3000:]
    for block in blocks:
        for sentence in quoted_examples(block):
            assert sentence in ran.stdout, (sentence, ran.stdout[-3000:])
