"""The rules of docs/architecture.md that an import contract cannot see, read from the code.

``lint-imports`` checks which module imports which. These check what a module *calls*:
a stored file is touched only by the storage layer (or by a reader of the operator's own
inputs), and ``ray.init`` runs only in the Ray runtime module. Each rule lists its allowed
modules with the reason, so a new exception is a visible, reviewed line here.
Pure source reading: no subprocess, no generated data.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Modules that may touch files, and why (docs/architecture.md, "Files only through the
# storage layer").
FILE_OWNERS = {
    "uba/io.py": "the storage module: data, model and output directories",
    "uba/locks.py": "a date's run lock (an flock on a file under runs/)",
    "uba/model/bundle.py": "the model bundle's own format, with checksums",
    "uba/alerting/ledger.py": "the SQLite delivery outbox",
    "uba/settings.py": "reads the operator's YAML config",
    "uba/ingest/files.py": "reads the operator's log files given to ingest",
    "uba/directory.py": "reads the operator's directory file given to users import",
    "uba/api/auth.py": "reads the operator's API key file",
    "uba/api/workers.py": "the API workers' shared metrics directory (a process runtime, not stored data)",
    "uba/api/metrics.py": "removes a dead API worker's files from that metrics directory",
    "uba/api/sklearn_scorer.py": "reads the operator's training matrix for api.scorer=sklearn",
}
RAY_RUNTIME = "uba/scoring/ray_backend.py"

# Calls that open, write, create or remove a file or directory.
FILE_METHODS = frozenset({
    "read_text", "write_text", "read_bytes", "write_bytes", "mkdir", "unlink", "rmdir", "touch",
    "symlink_to", "hardlink_to", "write_parquet", "sink_parquet", "write_csv", "write_ndjson",
})
FILE_FUNCTIONS = {
    "os": {"open", "replace", "rename", "remove", "unlink", "makedirs", "mkdir", "symlink", "rmdir"},
    "shutil": {"rmtree", "move", "copy", "copy2", "copyfile", "copytree"},
    "pl": {"read_parquet", "scan_parquet", "read_csv", "scan_csv", "read_ndjson", "scan_ndjson", "read_json"},
    "sqlite3": {"connect"},
    "json": {"load", "dump"},
    "np": {"load", "save", "savez", "savez_compressed"},
}


def library_files() -> list[Path]:
    return sorted([*(REPO / "uba").rglob("*.py"), *(REPO / "jobs").rglob("*.py")])


def file_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, call) of every call in ``tree`` that touches a file by the lists above."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            found.append((node.lineno, "open"))
        elif isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            if owner in FILE_FUNCTIONS and func.attr in FILE_FUNCTIONS[owner]:
                found.append((node.lineno, f"{owner}.{func.attr}"))
            elif owner not in FILE_FUNCTIONS and func.attr in FILE_METHODS:
                found.append((node.lineno, f".{func.attr}"))
    return found


def ray_inits(tree: ast.AST) -> list[int]:
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "init"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "ray"]


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def test_only_the_storage_layer_and_input_readers_touch_files() -> None:
    strays = [f"{relative(path)}:{line} {call}"
              for path in library_files() if relative(path) not in FILE_OWNERS
              for line, call in file_calls(ast.parse(path.read_text(encoding="utf-8")))]
    assert strays == []


def test_ray_is_started_only_by_the_ray_runtime() -> None:
    starts = [f"{relative(path)}:{line}" for path in library_files()
              for line in ray_inits(ast.parse(path.read_text(encoding="utf-8")))]
    assert starts and all(s.startswith(f"{RAY_RUNTIME}:") for s in starts), starts


def test_every_allowed_module_exists() -> None:
    """An allowance for a module that was renamed or removed is a stale exception."""
    assert [m for m in FILE_OWNERS if not (REPO / m).is_file()] == []


@pytest.mark.parametrize(("source", "expected"), [
    ("open(p)", ["open"]),
    ("path.write_text('x')", [".write_text"]),
    ("frame.write_parquet(p)", [".write_parquet"]),
    ("pl.scan_parquet(p)", ["pl.scan_parquet"]),
    ("os.replace(a, b)", ["os.replace"]),
    ("io.write_parquet_atomic(frame, p)", []),
    ("frame.select('a')", []),
])
def test_the_detector_sees_file_calls(source: str, expected: list[str]) -> None:
    """The rule above can fail: each kind of call it looks for is seen, and storage calls are not."""
    assert [call for _, call in file_calls(ast.parse(source))] == expected


def test_the_detector_sees_ray_init() -> None:
    assert ray_inits(ast.parse("import ray\nray.init(address='auto')\n")) == [2]
