"""docs/architecture.md's newcomer's path names files that exist.

The section lists, for adding a feature, an alert sink and a CLI command, every file to
touch, one bullet each: ``- `path`: what to do there``. A newcomer follows it
literally, so a renamed or removed file must fail here rather than send them looking
for it. Pure file checks: no subprocess, no generated data.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
SECTION = "## A newcomer's path: which files to touch"
PATHS = ("### To add a feature", "### To add an alert sink", "### To add a CLI command")
MIN_FILES = 5
BULLET = re.compile(r"^- `(?P<path>[^`\s]+)`: \S")
# A backticked token with a slash in it, anywhere in the section: a repository path.
PATH_TOKEN = re.compile(r"`(?P<path>[A-Za-z0-9_.<>-]+(?:/[A-Za-z0-9_.<>-]*)+)`")
PLACEHOLDER = re.compile(r"<[a-z_]+>")


def section_text(doc: str) -> str:
    """The newcomer's section, up to the next ``## `` heading."""
    start = doc.find(f"\n{SECTION}\n")
    if start < 0:
        raise ValueError(f"docs/architecture.md has no {SECTION!r} section")
    body = doc[start + len(SECTION) + 2:]
    end = body.find("\n## ")
    return body if end < 0 else body[:end]


def path_lists(doc: str) -> dict[str, list[str]]:
    """Each ``### To add ...`` heading and the paths of its bullets, in order. Every line
    starting with ``-`` must be a bullet of the documented form."""
    lists: dict[str, list[str]] = {}
    current: list[str] | None = None
    for number, line in enumerate(section_text(doc).splitlines(), start=1):
        if line.startswith("### "):
            current = lists.setdefault(line.strip(), [])
        elif line.startswith("-"):
            match = BULLET.match(line)
            if match is None or current is None:
                raise ValueError(f"line {number} of the section is not '- `path`: ...' under a '### ' "
                                 f"heading: {line!r}")
            current.append(match["path"])
    return lists


def missing_files(doc: str, repo: Path) -> list[str]:
    """Named paths that do not exist: each bullet's path must be a file; a path written
    elsewhere in the section must exist as a file (or, ending in ``/``, a directory); a
    ``<name>`` placeholder stands for a file to create, so only its folder must exist."""
    missing = []
    for paths in path_lists(doc).values():
        missing += [p for p in paths if PLACEHOLDER.search(p) or not (repo / p).is_file()]
    for token in PATH_TOKEN.finditer(section_text(doc)):
        path = token["path"]
        if PLACEHOLDER.search(path):
            exists = (repo / path).parent.is_dir() and not PLACEHOLDER.search(str(Path(path).parent))
        elif path.endswith("/"):
            exists = (repo / path).is_dir()
        else:
            exists = (repo / path).is_file()
        if not exists:
            missing.append(path)
    return sorted(set(missing))


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def test_the_section_lists_the_three_paths(doc: str) -> None:
    lists = path_lists(doc)
    assert list(lists) == list(PATHS)
    for heading, paths in lists.items():
        assert len(paths) >= MIN_FILES, heading
        assert len(paths) == len(set(paths)), f"{heading} names a file twice"


def test_every_named_file_exists(doc: str) -> None:
    assert missing_files(doc, REPO) == []


def test_the_paths_name_the_code_that_does_the_work(doc: str) -> None:
    """The lists name the files where features, sinks and commands are wired today."""
    lists = path_lists(doc)
    assert "uba/features/compiled.py" in lists["### To add a feature"]
    assert "uba/alerting/transport.py" in lists["### To add an alert sink"]
    assert "jobs/options.py" in lists["### To add a CLI command"]


@pytest.mark.parametrize("renamed", ["uba/alerting/transport.py", "tests/test_features.py", "jobs/options.py",
                                     "uba/api/inference.py", "uba/api/"])
def test_a_renamed_file_fails_the_check(doc: str, renamed: str) -> None:
    """The same page with one file renamed (in the doc, as after a rename in the code)."""
    assert f"`{renamed}`" in doc
    moved = renamed.rstrip("/") + "_old" + ("/" if renamed.endswith("/") else "")
    assert missing_files(doc.replace(f"`{renamed}`", f"`{moved}`"), REPO) == [moved]


def test_a_bullet_that_is_not_a_backticked_path_is_refused(doc: str) -> None:
    broken = doc.replace("- `uba/alerting/payloads.py`:", "- uba/alerting/payloads.py:")
    with pytest.raises(ValueError, match="line .* is not '- `path`: ...'"):
        path_lists(broken)


def test_a_placeholder_is_no_bullet_path(doc: str) -> None:
    """A bullet names a file that exists to copy or edit, never one still to be created."""
    broken = doc.replace("- `jobs/commands/report.py`:", "- `jobs/commands/<name>.py`:")
    assert missing_files(broken, REPO) == ["jobs/commands/<name>.py"]


# --- the layer drawing and the import-linter contract ----------------------------------

LAYERS_BLOCK = re.compile(r"<!-- layers: begin -->\n```\n(?P<body>.*?)\n```\n<!-- layers: end -->", re.S)


def drawn_layers(doc: str) -> list[str]:
    """The lines of the drawing between the layer markers, top first."""
    match = LAYERS_BLOCK.search(doc)
    if match is None:
        raise ValueError("docs/architecture.md has no layer drawing between the layer markers")
    return [line.strip() for line in match["body"].splitlines() if line.strip()]


def contracted_layers(pyproject: str) -> list[str]:
    """The layers of the one ``layers`` contract in ``[tool.importlinter]``, spaced as drawn."""
    contracts = tomllib.loads(pyproject)["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    return [" ".join(layer.split()) for layer in layers]


def test_the_layer_drawing_is_the_import_contract(doc: str) -> None:
    assert drawn_layers(doc) == contracted_layers((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_a_drawing_that_differs_from_the_contract_fails(doc: str) -> None:
    """Swapping two layers in the drawing (as after reordering only the page) is caught."""
    swapped = doc.replace("uba.monitoring\nuba.alerting\n", "uba.alerting\nuba.monitoring\n")
    assert swapped != doc
    assert drawn_layers(swapped) != contracted_layers((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_of_uba_is_in_a_layer(doc: str) -> None:
    """A new top-level module or package must be placed in the drawing (and the contract)."""
    placed = {name for line in drawn_layers(doc) for name in re.split(r"\s*[|:]\s*", line)}
    present = {f"uba.{p.stem}" for p in (REPO / "uba").glob("*.py") if p.stem != "__init__"}
    present |= {f"uba.{p.parent.name}" for p in (REPO / "uba").glob("*/__init__.py")}
    assert sorted(present - placed) == []
