"""The CLI as a user meets it: every command documented, user mistakes as one line."""

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from jobs.cli import cli

REPO = Path(__file__).resolve().parents[1]
UBA = Path(sys.executable).with_name("uba-batch")


def _commands() -> list[str]:
    ctx = cli.make_context("uba-batch", [], resilient_parsing=True)
    return cli.list_commands(ctx)


def test_core_commands_exist() -> None:
    assert {"generate", "ingest"} <= set(_commands())


@pytest.mark.parametrize("name", _commands())
def test_every_command_has_help_with_an_example(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"{name} --help has no example"
    assert f"uba-batch {name}" in result.output


def test_help_loads_no_library_only_the_commands() -> None:
    """``uba-batch --help`` imports every command module to list them: with the settings
    (pydantic, and Polars through uba.event_rules) loaded by each at import, it took ~0.8 s;
    each command loads what it needs when it runs (docs/architecture.md)."""
    probe = ("import sys\nfrom jobs.cli import cli\nsys.argv = ['uba-batch', '--help']\n"
             "try:\n    cli()\nexcept SystemExit:\n    pass\n"
             "heavy = {'polars', 'numpy', 'pyarrow', 'pydantic', 'pydantic_settings', 'yaml', 'uba.settings'}\n"
             "print(sorted(heavy & set(sys.modules)), file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "  score  " in result.stdout and "  ingest  " in result.stdout  # the commands are listed
    assert result.stderr.strip() == "[]", result.stderr


def _subcommands() -> list[tuple[str, str]]:
    ctx = cli.make_context("uba-batch", [], resilient_parsing=True)
    pairs = []
    for name in cli.list_commands(ctx):
        group = cli.get_command(ctx, name)
        if isinstance(group, click.Group):
            pairs += [(name, sub) for sub in group.list_commands(ctx)]
    return pairs


@pytest.mark.parametrize(("name", "sub"), _subcommands())
def test_every_subcommand_has_help_with_an_example(name: str, sub: str) -> None:
    result = CliRunner().invoke(cli, [name, sub, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"{name} {sub} --help has no example"
    assert f"uba-batch {name} {sub}" in result.output


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(UBA), *args], capture_output=True, text=True, env=full_env, cwd=REPO)


def test_bad_config_value_is_one_line_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model: {n_estimators: many}\n")
    result = _run("--config", str(config), "ingest", str(tmp_path / "x.csv"), "--data-dir", str(tmp_path))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "model.n_estimators" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreadable_input_is_one_line_without_traceback(tmp_path: Path) -> None:
    result = _run("ingest", str(tmp_path / "missing.csv"), "--data-dir", str(tmp_path / "d"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "missing.csv" in result.stderr


def test_json_log_format_emits_json_lines(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    result = _run("--log-format", "json", "generate", "--out", str(out), "--users", "5", "--days", "1",
                  "--start", "2026-03-01", "--seed", "3")
    assert result.returncode == 0, result.stderr
    import json

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "expected log lines on stderr"
    for line in lines:
        record = json.loads(line)
        assert {"ts", "level", "msg"} <= set(record)


def test_a_path_that_cannot_be_created_is_one_line_without_traceback(shared_world, tmp_path: Path) -> None:
    """A --data-dir / --model-dir / --output-dir / --out under a regular file: exit 1, one line."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    bad = str(blocker / "sub")
    data, models = str(shared_world.data_dir), str(shared_world.model_dir)
    day = shared_world.score_dates[0].isoformat()
    source = tmp_path / "e.csv"
    source.write_text("event_id,user_id,timestamp,event_type,session_duration_sec,events_in_session,device_type\n"
                      "e1,u1,2026-03-01T10:00:00Z,login,5,2,desktop\n")
    cases = {
        "cannot create the data directory": ["ingest", str(source), "--data-dir", bad],
        "cannot create the model directory": ["train", "--data-dir", data, "--model-dir", bad],
        "cannot create the run lock": ["score", "--date", day, "--data-dir", data, "--model-dir", models,
                                       "--output-dir", bad, "--in-process"],
        "cannot write the report to": ["evaluate", "--data-dir", data, "--model-dir", models, "--out", bad],
    }
    for message, args in cases.items():
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, (args[0], result.output)
        assert "Traceback" not in result.output and message in result.output, (args[0], result.output)


@pytest.mark.parametrize(("args", "value", "why"), [
    (["suppress", "add", "--user", "u1", "--reason-kind", "hour", "--expires"], "2026-02-30",
     "February 2026 has 28 days"),
    (["score", "--date"], "2026-04-31", "April 2026 has 30 days"),
    (["backfill", "--end", "2026-03-10", "--start"], "2026-13-01", "there is no month 13"),
    (["monitor", "--end", "2026-03-10", "--start"], "2026-03-00", "there is no day 00"),
    (["train", "--end-date"], "0000-01-01", "there is no year 0000"),
    (["alerts", "list", "--date"], "2025-02-29", "February 2025 has 28 days"),
])
def test_an_impossible_date_in_date_form_is_named_not_a_real_date(tmp_path: Path, args: list[str], value: str,
                                                                    why: str) -> None:
    """``--expires 2026-02-30`` was refused as "not a date in YYYY-MM-DD form", which it is."""
    result = CliRunner().invoke(cli, [*args, value, "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert f"{value!r} is not a real date: {why}" in last, last
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(("args", "value"), [
    (["score", "--date"], "20260301"),
    (["backfill", "--end", "2026-03-10", "--start"], "20260301"),
    (["suppress", "add", "--user", "u1", "--reason-kind", "hour", "--expires"], "20260630"),
    (["train", "--end-date"], "2026-W09-7"),
    (["generate", "--users", "3", "--days", "1", "--start"], "2026W097"),
    (["monitor", "--end", "2026-03-10", "--start"], "20260301"),
    (["alerts", "list", "--date"], "2026-W09-7"),
])
def test_iso_basic_and_week_dates_are_refused_naming_the_option(tmp_path: Path, args: list[str], value: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.11's date.fromisoformat takes ``20260301`` and ``2026-W09-7``, so every
    date option did, though the docs say YYYY-MM-DD; `suppress add --expires 20260630`
    stored a rule. Refused before anything is written."""
    monkeypatch.chdir(tmp_path)  # every directory the command could fall back to is under tmp_path/d
    paths = {f"UBA_{name}_DIR": str(tmp_path / "d" / name.lower()) for name in ("DATA", "MODEL", "OUTPUT")}
    option = args[-1]
    result = CliRunner().invoke(cli, [*args, value], env=paths)
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert f"Invalid value for '{option}': {value!r} is not a date in YYYY-MM-DD form" in last, last
    assert not (tmp_path / "d").exists()


def test_a_date_in_another_form_is_still_named_by_its_form(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["score", "--date", "2026-3-1", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "'2026-3-1' is not a date in YYYY-MM-DD form" in result.output, result.output


def test_a_file_operation_the_filesystem_refuses_is_one_line_naming_the_path(tmp_path: Path) -> None:
    """Only a full disk was turned into one line: any other refusal of the filesystem (a
    regular file where a folder belongs, a read-only mount, no permission) ended in a
    traceback, e.g. `feedback` and `suppress add` on a data directory whose folder was a
    file (found by an attack). Now any of them is one line with the errno and the path."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "suppressions").write_text("a file where the rules' folder belongs")
    result = _run("suppress", "add", "--user", "u1", "--reason-kind", "hour", "--expires", "2999-01-01",
                  "--data-dir", str(data))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: File exists [EEXIST] ({data / 'suppressions'}): a file operation of uba-batch suppress failed "
        "and it stopped there; check the path (a read-only or missing mount, its permissions, a file where a "
        "folder belongs or the reverse) and run it again"]
    verdicts = tmp_path / "verdicts.csv"
    verdicts.write_text("event_id,label,analyst\ne1,benign,ann\n")
    (data / "feedback").write_text("a file where the verdicts' folder belongs")
    result = _run("feedback", str(verdicts), "--data-dir", str(data), "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: File exists [EEXIST] ({data / 'feedback'}): a file operation of "
                                    "uba-batch feedback failed"), result.stderr
