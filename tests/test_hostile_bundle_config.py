"""Replays the hostile bundle and config corpus (tests/hostile/bundle/, tests/hostile/config/).

A bundle case is a recipe applied to a copy of a real model directory; a config case is
a YAML file. Each has ``<name>.expect.json``. Every case goes through the library
(``load_bundle`` / ``load_settings``) and the real CLI (in-process through Click, and
for the cases marked ``cli_subprocess`` as a real ``uba-batch`` / ``uba-api`` process):
a one-line error containing the expected words, no traceback, nothing of the hostile
file's content echoed. Formats: the README.md next to each corpus.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from worlds import SCORE_DAY, World

from jobs.cli import cli
from uba.alerting.thresholds import history_from_training, load_or_build_history
from uba.errors import BundleError, UserError
from uba.features.events import FEATURE_COLUMNS, FEATURE_SET_VERSION
from uba.io import user_score_history_path
from uba.model.bundle import CHECKSUMS_FILE, load_bundle
from uba.settings import load_settings

HOSTILE = Path(__file__).parent / "hostile"
BUNDLE_CASES = sorted(p.name.removesuffix(".expect.json") for p in (HOSTILE / "bundle").glob("*.expect.json"))
# Cases on the per-user score table stored next to a bundle: the bundle loads, the table
# is refused and rebuilt from the training window (replayed through load_or_build_history).
HISTORY_CASES = [name for name in BUNDLE_CASES
                 if json.loads((HOSTILE / "bundle" / f"{name}.expect.json").read_text()).get("replay")
                 == "user_score_history"]
LOAD_CASES = [name for name in BUNDLE_CASES if name not in HISTORY_CASES]
CONFIG_CASES = sorted(p.name.removesuffix(".expect.json") for p in (HOSTILE / "config").glob("*.expect.json"))
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def world(serving_world: World) -> World:
    return serving_world


def _expect(kind: str, name: str) -> dict[str, Any]:
    return json.loads((HOSTILE / kind / f"{name}.expect.json").read_text())


def _check_message(message: str, expect: dict[str, Any]) -> None:
    """One line, the expected words, none of the hostile content."""
    text = message.strip()
    assert "Traceback" not in text, text
    assert "\n" not in text, text
    assert expect["error_contains"] in text, text
    for needle in expect.get("not_echoed", []):
        assert needle not in text, text


# ---------------------------------------------------------------- bundle recipes


def _rewrite_checksum(bundle_dir: Path, name: str) -> None:
    checksums = json.loads((bundle_dir / CHECKSUMS_FILE).read_text())
    checksums["files"][name] = hashlib.sha256((bundle_dir / name).read_bytes()).hexdigest()
    (bundle_dir / CHECKSUMS_FILE).write_text(json.dumps(checksums))


def _zip_claiming(size: int) -> bytes:
    """A stored one-member zip whose central directory claims ``size`` inflated bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("threshold.npy", b"\x00" * 64)
    data = bytearray(buffer.getvalue())
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = struct.pack("<I", size)  # uncompressed size
    return bytes(data)


def _npz(arrays: dict[str, list[int]]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(values) for name, values in arrays.items()})
    return buffer.getvalue()


def _content(step: dict[str, Any]) -> bytes:
    if "repeat" in step:
        unit, count = step["repeat"]
        return (unit * count).encode()
    return step.get("text", "").encode() + bytes.fromhex(step.get("append_hex", ""))


def apply_step(model_dir: Path, version: str, outside: Path, step: dict[str, Any]) -> None:
    """One recipe step on ``model_dir`` (``$V`` is the bundle's version directory)."""
    path = model_dir / step["path"].replace("$V", version)
    op = step["op"]
    if op == "move_outside_and_link":
        moved = outside / "moved-bundle"
        shutil.move(path, moved)
        path.symlink_to(moved, target_is_directory=True)
        return
    consistent = op in ("edit_json_consistently", "write_consistently", "zip_claiming_size", "npz_consistently")
    if op == "edit_json_consistently":
        data = json.loads(path.read_text()) | step["set"]
    if path.is_symlink() or path.is_file() or path.exists():
        path.unlink()
    if op == "symlink":
        target = step["target"]
        if target.startswith("@outside/"):
            target = outside / target.removeprefix("@outside/")
            Path(target).write_text(step.get("text", ""))
        path.symlink_to(target)
    elif op in ("write", "write_consistently"):
        path.write_bytes(_content(step))
    elif op == "write_hex":
        path.write_bytes(bytes.fromhex(step["hex"]))
    elif op == "edit_json_consistently":
        path.write_text(json.dumps(data))
    elif op == "zip_claiming_size":
        path.write_bytes(_zip_claiming(step["size"]))
    elif op == "npz_consistently":
        path.write_bytes(_npz(step["arrays"]))
    elif op == "mkfifo":
        os.mkfifo(path)
    elif op == "mkdir":
        path.mkdir()
    elif op == "sparse":
        with open(path, "wb") as handle:
            handle.truncate(step["size"])
    elif op == "mknod_char":
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(step["major"], step["minor"]))
    else:
        raise ValueError(f"unknown recipe op {op!r}")
    if consistent:
        _rewrite_checksum(path.parent, path.name)


def build_bundle_case(world: World, name: str, root: Path) -> Path:
    recipe = json.loads((HOSTILE / "bundle" / f"{name}.json").read_text())
    model_dir, outside = root / "models", root / "outside"
    shutil.copytree(world.model_dir, model_dir)
    outside.mkdir()
    for step in recipe["steps"]:
        apply_step(model_dir, world.version, outside, step)
    return model_dir


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", LOAD_CASES)
def test_hostile_bundle_case(world: World, name: str, tmp_path: Path) -> None:
    expect = _expect("bundle", name)
    if expect.get("needs_root") and os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    model_dir = build_bundle_case(world, name, tmp_path)
    with pytest.raises(BundleError) as caught:
        load_bundle(model_dir, expected_features=FEATURE_COLUMNS, expected_feature_set_version=FEATURE_SET_VERSION)
    _check_message(str(caught.value), expect)

    args = ["score", "--date", SCORE_DAY.isoformat(), "--data-dir", str(world.data_dir),
            "--model-dir", str(model_dir), "--output-dir", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, args, env=world.env())
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.startswith("error: "), result.output
    _check_message(result.output, expect)
    if expect.get("cli_subprocess"):
        run = subprocess.run([str(BIN / "uba-batch"), *args], capture_output=True, text=True, timeout=60,
                             env=world.env())
        assert run.returncode == 1 and run.stdout == "", run.stdout
        _check_message(run.stderr, expect)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", HISTORY_CASES)
def test_hostile_user_score_history_case(world: World, name: str, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """The bundle loads; its tampered per-user table is refused without blocking or quoting
    it, rebuilt from the training window and stored in place of the hostile entry, whose
    target (a file outside the model directory) is never written."""
    expect = _expect("bundle", name)
    model_dir = build_bundle_case(world, name, tmp_path)
    outside = {p: p.read_bytes() for p in (tmp_path / "outside").iterdir() if p.is_file()}
    bundle = load_bundle(model_dir, expected_features=FEATURE_COLUMNS,
                         expected_feature_set_version=FEATURE_SET_VERSION)
    settings = world.settings()
    table = user_score_history_path(bundle.path, settings.user_thresholds.user_quantile)
    logger = logging.getLogger("uba.thresholds")
    logger.addHandler(caplog.handler)
    try:
        history = load_or_build_history(settings, bundle)
        warnings = sorted({r.getMessage() for r in caplog.records if r.levelno == logging.WARNING})
        caplog.clear()
        again = load_or_build_history(settings, bundle)
    finally:
        logger.removeHandler(caplog.handler)
    assert len(warnings) == 1, warnings
    _check_message(warnings[0], {"error_contains": expect["warning_contains"], **expect})
    assert str(table) in warnings[0]
    assert history.equals(history_from_training(settings, bundle))
    assert stat.S_ISREG(os.lstat(table).st_mode) and again.equals(history)  # stored, read back quietly
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert {p: p.read_bytes() for p in outside} == outside


# ---------------------------------------------------------------- config files


def _setting(settings: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        settings = getattr(settings, part)
    return settings


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", CONFIG_CASES)
def test_hostile_config_case(name: str, tmp_path: Path) -> None:
    expect = _expect("config", name)
    path = HOSTILE / "config" / f"{name}.yaml"
    if "ok" in expect:
        settings = load_settings(path, env={})
        for dotted, value in expect["ok"].items():
            assert _setting(settings, dotted) == value
        return
    with pytest.raises(UserError) as caught:
        load_settings(path, env={})
    _check_message(str(caught.value), expect)

    args = ["--config", str(path), "score", "--date", SCORE_DAY.isoformat(), "--data-dir", str(tmp_path)]
    result = CliRunner().invoke(cli, args, env={"UBA_CONFIG": ""})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    _check_message(result.output, expect)
    if expect.get("cli_subprocess"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("UBA_")}
        for command in ([str(BIN / "uba-batch"), *args], [str(BIN / "uba-api"), "--config", str(path)]):
            run = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
            assert run.returncode == 1, (command, run.stdout, run.stderr)
            _check_message(run.stderr, expect)


def test_the_corpus_is_complete() -> None:
    """Every input has its verdict; with the API corpus, 60+ cases cover items 9-13."""
    bundle_inputs = {p.stem for p in (HOSTILE / "bundle").glob("*.json") if not p.name.endswith(".expect.json")}
    config_inputs = {p.stem for p in (HOSTILE / "config").glob("*.yaml")}
    assert bundle_inputs == set(BUNDLE_CASES) and config_inputs == set(CONFIG_CASES)
    api_cases = list((HOSTILE / "api").glob("*.expect.json"))
    assert len(BUNDLE_CASES) >= 15 and len(CONFIG_CASES) >= 15
    assert len(BUNDLE_CASES) + len(CONFIG_CASES) + len(api_cases) >= 60
