"""Compaction of the analysts' append-only tables (uba.alerting.compaction) on real files
and real processes: every answer read from a table is the same before and after, while
writers, readers and a killed compaction run beside it; ``score`` compacts after
publishing without making its own risk stale."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from waiting import stopped, wait_until

from uba import io
from uba.alerting.compaction import compact_table, compact_tables
from uba.alerting.feedback import (
    add_rule,
    known_reason_kinds,
    load_rules,
    record_feedback,
    remove_rule,
)
from uba.alerting.triage import TRIAGE, TRIAGE_SCHEMA, triage_log, triage_state
from uba.schema import FEEDBACK_SCHEMA

BATCH = str(Path(sys.executable).with_name("uba-batch"))
T0 = datetime(2026, 3, 10, 12, tzinfo=UTC)


def _feedback_part(data_dir: Path, event_id: str, label: str, at: datetime) -> None:
    row = pl.DataFrame([{"event_id": event_id, "label": label, "analyst": "ann", "note": None, "source": "api",
                         "recorded_at": at, "seq": 0}], schema=FEEDBACK_SCHEMA)
    io.append_table_part(row, data_dir, io.FEEDBACK)


def _triage_part(data_dir: Path, alert_id: str, status: str, at: datetime) -> None:
    row = pl.DataFrame([{"alert_id": alert_id, "action": "close" if status == "closed" else "reopen",
                         "status": status, "verdict": None, "note": None, "analyst": "ann", "alert_type": "event",
                         "user_id": "u1", "event_date": date(2026, 3, 9), "suppression_rule": None,
                         "recorded_at": at}], schema=TRIAGE_SCHEMA)
    io.append_table_part(row, data_dir, TRIAGE)


def _answers(data_dir: Path) -> dict[str, object]:
    """What the product reads from the three tables."""
    return {
        "verdicts": io.verdicts_in_effect(data_dir).sort("event_id").rows(),
        "latest": io.latest_feedback(data_dir).collect().sort("event_id").rows(),
        "benign": sorted(io.benign_verdicts(data_dir)),
        "rules": load_rules(data_dir).rows(),
        "triage_log": triage_log(data_dir).rows(),
        "triage_state": triage_state(data_dir).sort("alert_id").rows(),
    }


def _labels(data_dir: Path) -> dict[str, str]:
    return dict(io.verdicts_in_effect(data_dir).select("event_id", "label").rows())


def _status(data_dir: Path, alert_id: str) -> str:
    return str(triage_state(data_dir).filter(pl.col("alert_id") == alert_id)["status"].item())


def test_compaction_keeps_every_answer_and_the_write_order_across_merges(tmp_path: Path) -> None:
    """A later part wins over an earlier one even when its clock said earlier (a slow
    writer's rows stamped before another's): the merged part keeps which part each row
    came from, so sorting it by time within the part cannot reorder them."""
    data = tmp_path / "data"
    _feedback_part(data, "e1", "benign", T0 + timedelta(seconds=5))
    _feedback_part(data, "e1", "malicious", T0)  # written later, stamped earlier: it wins
    _triage_part(data, "a1", "closed", T0 + timedelta(seconds=5))
    _triage_part(data, "a1", "open", T0)
    record_feedback(data, [{"event_id": "e2", "label": "benign"}, {"event_id": "e2", "label": "malicious"}])
    record_feedback(data, [{"event_id": "e3", "label": "benign"}])
    kinds = known_reason_kinds()
    rule = add_rule(data, "u1", kinds[0], kinds)
    add_rule(data, "u2", kinds[1], kinds)
    remove_rule(data, rule)
    before = _answers(data)
    assert _labels(data)["e1"] == "malicious" and _status(data, "a1") == "open"

    done = {c.table: c for c in compact_tables(data)}
    assert [(c.parts_before, c.parts_after, c.rows) for c in done.values()] == [(4, 1, 5), (3, 1, 3), (2, 1, 2)]
    assert _answers(data) == before
    assert [p.name.endswith("-merged.parquet") for t in (io.FEEDBACK, io.SUPPRESSIONS, TRIAGE)
            for p in io.listed_table_parts(data, t)] == [True] * 3

    # parts written after a merge sort after it, and a second merge of merged + new keeps the order
    _feedback_part(data, "e1", "benign", T0 - timedelta(days=1))
    _feedback_part(data, "e4", "malicious", T0)
    _triage_part(data, "a1", "closed", T0 - timedelta(days=1))
    again = _answers(data)
    assert _labels(data)["e1"] == "benign" and _status(data, "a1") == "closed"
    second = compact_table(data, io.FEEDBACK)
    assert (second.parts_before, second.parts_after, second.rows) == (3, 1, 7)
    compact_table(data, TRIAGE)
    assert _answers(data) == again
    assert compact_table(data, io.FEEDBACK).skipped == "1 part(s), fewer than 2"


def test_a_compaction_killed_between_its_merge_and_its_deletes_leaves_the_table_whole(tmp_path: Path) -> None:
    """The merged part names the parts it replaces: once it is in place, readers leave
    them out, so a kill before the deletes neither doubles a row nor loses one, and the
    next compaction removes what was left."""
    data = tmp_path / "data"
    for k in range(6):
        record_feedback(data, [{"event_id": f"e{k % 4}", "label": "benign" if k % 2 else "malicious"}])
    before = _answers(data)
    run = subprocess.Popen([BATCH, "tables", "compact", "--table", "feedback", "--data-dir", str(data)],
                           env={**os.environ, io.FAULT_STOP_ENV: "table_compaction"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: run.poll() is not None or stopped(run.pid), 120, "the compaction to stop before deletes")
        assert run.poll() is None, run.communicate()[0]
    finally:
        run.kill()
    run.wait(timeout=30)
    listed = io.listed_table_parts(data, io.FEEDBACK)
    assert len(listed) == 7 and len(io.table_part_files(data, io.FEEDBACK)) == 1
    assert _answers(data) == before
    out = subprocess.run([BATCH, "tables", "compact", "--data-dir", str(data)], capture_output=True, text=True,
                         check=True).stdout
    assert "feedback: not compacted (1 part(s), fewer than 2)" in out
    assert len(io.listed_table_parts(data, io.FEEDBACK)) == 1 and _answers(data) == before


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from uba.alerting.feedback import record_feedback
    data, name, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    for k in range(n):
        record_feedback(data, [{"event_id": f"{name}-{k}", "label": "benign"},
                               {"event_id": f"{name}-last", "label": "benign" if k % 2 else "malicious"}])
""")
COMPACTOR = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from uba.alerting.compaction import compact_table
    data, until = Path(sys.argv[1]), Path(sys.argv[2])
    merges = 0
    while not until.exists():
        merges += compact_table(data, "feedback").merged
        time.sleep(0.05)
    print(merges)
""")
READER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from uba import io
    data, until = Path(sys.argv[1]), Path(sys.argv[2])
    seen, reads = 0, 0
    while not until.exists():
        table = io.scan_table(data, "feedback")
        rows = 0 if table is None else table.collect()
        if not isinstance(rows, int):
            keys = rows.select("event_id", "recorded_at", "seq")
            assert keys.n_unique() == keys.height, "a row read twice"
            rows = rows.height
        assert rows >= seen, f"rows went from {seen} to {rows}"
        seen, reads = rows, reads + 1
    print(reads)
""")


def test_writers_readers_and_compactions_at_once_lose_and_reorder_nothing(tmp_path: Path) -> None:
    """Three processes appending verdicts, one compacting in a loop and one reading in a
    loop: every verdict is there once, each writer's last label for its shared id is the
    one in effect, and no read saw a row twice or fewer rows than the read before."""
    data, until = tmp_path / "data", tmp_path / "stop"
    (data / io.FEEDBACK).mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    loops = [subprocess.Popen([sys.executable, "-c", code, str(data), str(until)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for code in (COMPACTOR, READER)]
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(data), f"w{i}", "40"], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(3)]
    try:
        for w in writers:
            assert w.wait(timeout=300) == 0, w.communicate()[1][-2000:]
    finally:
        until.touch()
    results = [p.communicate(timeout=120) for p in loops]
    assert [p.returncode for p in loops] == [0, 0], [r[1][-2000:] for r in results]
    merges, reads = (int(r[0].strip()) for r in results)
    assert merges >= 2 and reads >= 10, (merges, reads)
    verdicts = _labels(data)
    assert len(verdicts) == 3 * 41
    assert all(verdicts[f"w{i}-last"] == "benign" for i in range(3))  # k = 39 is odd: its last label
    table = io.scan_table(data, io.FEEDBACK)
    assert table is not None and table.collect().height == 3 * 40 * 2
    compact_table(data, io.FEEDBACK)
    assert len(io.listed_table_parts(data, io.FEEDBACK)) == 1


@pytest.fixture
def scored_copy(shared_world, tmp_path: Path):  # type: ignore[no-untyped-def]
    world = shared_world.copy(tmp_path / "world")
    return world


def _score_stopping_at_risk(world, day: date, act) -> str:  # type: ignore[no-untyped-def]
    """``score`` of ``day`` stopped just before it writes its risk part (its risk is
    computed, its commit not checked): ``act()`` runs there, then the run goes on."""
    run = subprocess.Popen([BATCH, "score", "--date", day.isoformat(), "--in-process"],
                           env=world.env(**{io.FAULT_STOP_ENV: "staged_part"}),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    risk_dir = f".staging/event_date={day}/*/risk"
    acted = False
    try:
        while run.poll() is None:
            wait_until(lambda: run.poll() is not None or stopped(run.pid), 300, "the run to stop at a part")
            if run.poll() is None:
                if not acted and any(world.output_dir.glob(risk_dir)):
                    act()
                    acted = True
                run.send_signal(signal.SIGCONT)
    finally:
        if run.poll() is None:
            run.kill()
    output = run.communicate(timeout=60)[0]
    assert run.returncode == 0 and acted, output[-3000:]
    return output


def test_score_compacts_after_publishing_and_a_compaction_mid_run_leaves_its_risk_current(
        scored_copy) -> None:  # type: ignore[no-untyped-def]
    """The run used to compare the feedback table's part names before its commit: a
    compaction renames them all, so it would have marked its own risk stale. It compares
    the benign verdicts instead: a compaction changes nothing, a new benign verdict does."""
    world = scored_copy
    day = world.score_dates[0]
    for k in range(4):
        record_feedback(world.data_dir, [{"event_id": f"not-an-alert-{k}", "label": "benign"}])
    merged = _score_stopping_at_risk(world, day, lambda: compact_tables(world.data_dir))
    assert "compacted feedback" not in merged  # merged mid-run: one part left, below any threshold
    manifest = json.loads(io.run_manifest_path(world.output_dir, day).read_text())
    assert not manifest.get("risk_stale"), manifest.get("risk_stale")

    for k in range(3):
        record_feedback(world.data_dir, [{"event_id": f"again-{k}", "label": "malicious"}])
        _triage_part(world.data_dir, f"a{k}", "closed", T0)
    broken = world.data_dir / TRIAGE / "part-20260310T120000000000Z-0badc0de.parquet"
    broken.write_bytes(b"PAR1 cut short by a full disk")
    out = subprocess.run([BATCH, "score", "--date", day.isoformat(), "--in-process"], capture_output=True, text=True,
                         env=world.env(UBA_SCORING__COMPACT_TABLES_AFTER_PARTS="4"))
    # published and exit 0: a table that cannot be merged is a warning naming it, the others are merged
    assert out.returncode == 0, out.stderr[-3000:]
    assert "compacted feedback: 4 parts -> 1 (7 rows)" in out.stdout
    assert (f"warning: compacting the triage table failed, nothing lost (it is read as it was); `uba-batch tables "
            f"compact --table triage` says why: triage part {broken} is not a readable Parquet file") in out.stderr
    assert len(io.listed_table_parts(world.data_dir, TRIAGE)) == 4
    assert not json.loads(io.run_manifest_path(world.output_dir, day).read_text()).get("risk_stale")

    verdict = _score_stopping_at_risk(world, day, lambda: record_feedback(
        world.data_dir, [{"event_id": "late-benign", "label": "benign"}]))
    stale = json.loads(io.run_manifest_path(world.output_dir, day).read_text())["risk_stale"]
    assert [e["reason"] for e in stale] == ["benign verdicts changed while this run computed its risk"], verdict


def _corrupt_page_header(part: Path) -> None:
    """Set the value count of the first data page of ``part``'s ``recorded_at`` column to
    -12 (one byte, as a bit flip on disk would): Polars 2.1 and 2.2 then ask for 2**61
    bytes to decode the page and abort the process (SIGABRT), past any ``except``."""
    import pyarrow.parquet as pq

    data = bytearray(part.read_bytes())
    row_group = pq.ParquetFile(part).metadata.row_group(0)
    column = next(row_group.column(i) for i in range(row_group.num_columns)
                  if row_group.column(i).path_in_schema == "recorded_at")
    at = data.index(b"\x2c\x15\x02", column.data_page_offset)  # DataPageHeader, num_values = 1 (zigzag)
    data[at + 2] = 0x17
    part.write_bytes(bytes(data))


def _read_in_a_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)


def test_a_triage_part_that_aborts_polars_is_named_by_its_readers(scored_copy) -> None:  # type: ignore[no-untyped-def]
    """One triage part with one byte flipped aborted Polars: ``alerts list`` died with a Rust
    backtrace, and score, which compacts the table after publishing, exited 134. The
    analysts' tables are decoded by pyarrow now, so every reader names the part in one line;
    score's compaction meets it as any unreadable part (the test above: a warning, exit 0)."""
    world = scored_copy
    day = world.score_dates[0]
    for k in range(3):
        _triage_part(world.data_dir, f"a{k}", "closed", T0)
    damaged = io.table_part_files(world.data_dir, TRIAGE)[1]
    _corrupt_page_header(damaged)
    polars = _read_in_a_child("import sys, polars as pl; pl.read_parquet(sys.argv[1])", str(damaged))
    assert polars.returncode == -signal.SIGABRT, polars.stderr[-2000:]  # what the part does to Polars
    ours = _read_in_a_child("import sys; from uba.alerting.triage import triage_log; triage_log(sys.argv[1])",
                            str(world.data_dir))
    said = (f"uba.io.CorruptPartError: triage part {damaged} is not a readable Parquet file: Invalid page header "
            "(negative number of values); move it aside or restore it from a backup; the other parts of its table "
            "are intact")
    assert ours.returncode == 1 and ours.stderr.strip().splitlines()[-1] == said, ours.stderr[-2000:]
    listed = subprocess.run([BATCH, "alerts", "list", "--date", day.isoformat()], capture_output=True, text=True,
                            env=world.env())
    assert listed.returncode == 1 and f"triage part {damaged} is not a readable Parquet file" in listed.stderr
    compacted = subprocess.run([BATCH, "tables", "compact", "--table", "triage", "--data-dir", str(world.data_dir)],
                               capture_output=True, text=True)
    assert compacted.returncode == 1 and f"triage part {damaged} is not a readable Parquet file" in compacted.stderr
    assert len(io.listed_table_parts(world.data_dir, TRIAGE)) == 3


def _child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in children.read_text().split()] if children.exists() else []


def test_score_publishes_and_exits_0_when_its_compaction_process_is_killed(scored_copy) -> None:  # type: ignore[no-untyped-def]
    """score compacts in a child process, so that a crash of the merge (a Rust abort
    ends the whole process, past any ``except``) cannot end a run that has published its
    day. Each table's child is stopped once its merged part is in place and SIGKILLed
    there: score warns, names the signal, exits 0, and every table answers as before."""
    world = scored_copy
    day = world.score_dates[0]
    for k in range(3):
        record_feedback(world.data_dir, [{"event_id": f"e{k}", "label": "benign"}])
        _triage_part(world.data_dir, f"a{k}", "closed", T0 + timedelta(seconds=k))
    before = _answers(world.data_dir)
    run = subprocess.Popen([BATCH, "score", "--date", day.isoformat(), "--in-process"],
                           env=world.env(UBA_SCORING__COMPACT_TABLES_AFTER_PARTS="3",
                                         **{io.FAULT_STOP_ENV: "table_compaction"}),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = 0
    try:
        while run.poll() is None:
            for child in _child_pids(run.pid):
                with contextlib.suppress(FileNotFoundError):
                    if stopped(child):
                        os.kill(child, signal.SIGKILL)
                        killed += 1
            time.sleep(0.05)
        out, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 0 and killed == 2, (killed, err[-3000:])
    for table in (io.FEEDBACK, TRIAGE):
        assert (f"warning: compacting the {table} table failed, nothing lost (it is read as it was); `uba-batch "
                f"tables compact --table {table}` says why: the process merging {world.data_dir / table} was "
                "killed by SIGKILL") in err
    assert "drift:" in out + err
    assert _answers(world.data_dir) == before


def test_tables_compact_says_what_it_did_to_each_table_past_one_that_fails(tmp_path: Path) -> None:
    """A table that could not be merged ended the command with its error alone: the
    tables before it were merged without a word, those after it not tried. Each table
    now gets its line, the failing one an error line naming its part, and the exit is 1."""
    data = tmp_path / "data"
    for k in range(2):
        record_feedback(data, [{"event_id": f"e{k}", "label": "benign"}])
        _triage_part(data, f"a{k}", "closed", T0 + timedelta(seconds=k))
    kinds = known_reason_kinds()
    add_rule(data, "u1", kinds[0], kinds)
    broken = data / io.SUPPRESSIONS / "part-20260310T120000000000Z-0badc0de.parquet"
    broken.write_bytes(b"not parquet")
    out = subprocess.run([BATCH, "tables", "compact", "--data-dir", str(data)], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stdout.splitlines() == ["feedback: 2 parts -> 1 (2 rows)", "triage: 2 parts -> 1 (2 rows)"]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error")]
    assert errors == [f"error: suppressions: not compacted: suppressions part {broken} is not a readable Parquet "
                      "file: Parquet magic bytes not found in footer. Either the file is corrupted or this is not a "
                      "parquet file; move it aside or restore it from a backup; the other parts of its "
                      "table are intact"], out.stderr


def test_the_next_compaction_removes_what_a_killed_one_left_and_says_so(tmp_path: Path) -> None:
    """After a compaction killed once its merged part was in place, the table has one part:
    the next one removed the replaced parts but said only "not compacted (1 part(s),
    fewer than 2)"; and the temporary file of one killed before its rename (as big as the
    table) was never removed by anything."""
    data = tmp_path / "data"
    for k in range(4):
        record_feedback(data, [{"event_id": f"e{k}", "label": "benign"}])
    before = _answers(data)
    run = subprocess.Popen([BATCH, "tables", "compact", "--table", "feedback", "--data-dir", str(data)],
                           env={**os.environ, io.FAULT_STOP_ENV: "table_compaction"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: run.poll() is not None or stopped(run.pid), 120, "the compaction to stop before deletes")
    finally:
        run.kill()
        run.wait(timeout=30)
    killed_write = data / io.FEEDBACK / f"{io.TMP_PREFIX}0123456789abcdef0123456789abcdef.parquet"
    killed_write.write_bytes(io.table_part_files(data, io.FEEDBACK)[0].read_bytes())  # what a kill before rename leaves
    out = subprocess.run([BATCH, "tables", "compact", "--table", "feedback", "--data-dir", str(data)],
                         capture_output=True, text=True, check=True).stdout
    assert out == ("feedback: not compacted (1 part(s), fewer than 2); removed 4 part(s) an earlier compaction "
                   "had merged\n")
    assert not killed_write.exists()
    assert [p.name for p in (data / io.FEEDBACK).iterdir() if p.name != io.TABLE_COMPACT_LOCK] == \
        [p.name for p in io.table_part_files(data, io.FEEDBACK)]
    assert _answers(data) == before


def test_a_compaction_waiting_for_an_append_names_the_table_lock_not_an_ingest(tmp_path: Path) -> None:
    """``tables compact`` waits for appends in flight; its line said "waiting up to 60s for
    the ingest lock ... (another ingest holds it)" and its error after 60 s blamed an
    ingest and ingest.lock_timeout_sec."""
    data = tmp_path / "data"
    for k in range(2):
        record_feedback(data, [{"event_id": f"e{k}", "label": "benign"}])
    lock = data / io.FEEDBACK / io.TABLE_COMPACT_LOCK
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_SH)  # as an append writing its part holds it
    try:
        run = subprocess.Popen([BATCH, "tables", "compact", "--table", "feedback", "--data-dir", str(data)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert run.stderr is not None
        waiting = run.stderr.readline()
    finally:
        os.close(fd)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0 and out == "feedback: 2 parts -> 1 (2 rows)\n", err
    assert f"waiting up to 60s for the table's compaction lock {lock} (an append" in waiting
    assert "ingest" not in waiting + err


def test_an_immutable_table_folder_is_one_line_naming_it(tmp_path: Path) -> None:
    """Polars refuses a file it may not create as a PermissionError without errno, which
    the CLI took for a bug: `tables compact` and `feedback` on a folder made immutable
    (chattr +i; root passes chmod) ended in tracebacks. One line with errno and path."""
    data = tmp_path / "data"
    for k in range(2):
        record_feedback(data, [{"event_id": f"e{k}", "label": "benign"}])
    folder = data / io.FEEDBACK
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        compact = subprocess.run([BATCH, "tables", "compact", "--table", "feedback", "--data-dir", str(data)],
                                 capture_output=True, text=True)
        labels = tmp_path / "labels.csv"
        labels.write_text("event_id,label\ne9,benign\n")
        feedback = subprocess.run([BATCH, "feedback", str(labels), "--data-dir", str(data)],
                                  capture_output=True, text=True)
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    assert compact.returncode == 1 and "Traceback" not in compact.stderr, compact.stderr[-2000:]
    assert compact.stderr.startswith(f"error: feedback: not compacted: Operation not permitted [EPERM] ({folder}/"), \
        compact.stderr
    assert feedback.returncode == 1 and "Traceback" not in feedback.stderr, feedback.stderr[-2000:]
    assert feedback.stderr.startswith(f"error: Operation not permitted [EPERM] ({folder}/"), feedback.stderr
    assert len(io.listed_table_parts(data, io.FEEDBACK)) == 2


def test_a_fifo_named_like_a_table_part_is_refused_without_being_opened(tmp_path: Path) -> None:
    """Opening a FIFO waits for a writer: one named like a part in ``triage/`` hung
    `tables compact` and score's compaction after publishing (score never read that
    table before), one named like a merged part hung every reader of its table."""
    data = tmp_path / "data"
    for k in range(2):
        _triage_part(data, f"a{k}", "closed", T0)
    kinds = known_reason_kinds()
    add_rule(data, "u1", kinds[0], kinds)
    fifo = data / TRIAGE / "part-20260310T120000000000Z-0badc0de.parquet"
    merged_fifo = data / io.SUPPRESSIONS / "part-20260310T120000000000Z-0badc0de-merged.parquet"
    os.mkfifo(fifo)
    os.mkfifo(merged_fifo)
    compact = subprocess.run([BATCH, "tables", "compact", "--table", "triage", "--data-dir", str(data)],
                             capture_output=True, text=True, timeout=60)
    assert compact.returncode == 1 and compact.stderr == (
        f"error: triage: not compacted: triage part {fifo} is not a regular file (a FIFO, device, folder or "
        "dangling link named like a part): reading it could block or fail; remove it\n")
    rules = subprocess.run([BATCH, "suppress", "list", "--data-dir", str(data)], capture_output=True, text=True,
                           timeout=60)
    assert rules.returncode == 1 and f"suppressions part {merged_fifo} is not a regular file" in rules.stderr
    assert "Traceback" not in rules.stderr


RULES_RELOAD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from uba.api.state import load_suppression_rules
    rules, key = load_suppression_rules(Path(sys.argv[1]))
    print(rules.height)
""")


def test_the_apis_rule_reload_beside_a_compaction_deleting_a_merged_part(tmp_path: Path) -> None:
    """The API's rule reload (start-up, /admin/reload, the periodic check) keyed the rules
    by the suppression table's parts, reading each merged part's metadata outside the
    readers' list-again loop: a merged part deleted by a compaction between that listing
    and that read was a FileNotFoundError, logged as "periodic reload failed unexpectedly"
    with a traceback (6 in 860 reloads beside a compaction loop)."""
    data = tmp_path / "data"
    kinds = known_reason_kinds()
    for k in range(2):
        add_rule(data, f"u{k}", kinds[0], kinds)
    compact_table(data, io.SUPPRESSIONS)
    add_rule(data, "u2", kinds[0], kinds)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    compactor = subprocess.Popen([BATCH, "tables", "compact", "--table", "suppressions", "--data-dir", str(data)],
                                 env={**env, io.FAULT_STOP_ENV: "table_compaction"}, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    reader = subprocess.Popen([sys.executable, "-c", RULES_RELOAD, str(data)], env={**env, io.FAULT_STOP_ENV:
                              "table_listing"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: stopped(compactor.pid), 120, "the compaction to stop between its rename and deletes")
        wait_until(lambda: reader.poll() is not None or stopped(reader.pid), 120, "the reload to list the table")
        assert len(io.listed_table_parts(data, io.SUPPRESSIONS)) == 3  # the old merged part, a rule, the new merged
        compactor.send_signal(signal.SIGCONT)
        assert compactor.wait(timeout=120) == 0
        while reader.poll() is None:  # it stops again at each listing
            wait_until(lambda: reader.poll() is not None or stopped(reader.pid), 120, "the reload to go on")
            reader.send_signal(signal.SIGCONT)
    finally:
        for process in (compactor, reader):
            if process.poll() is None:
                process.kill()
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0 and out.strip() == "3", err[-2000:]


def test_a_verdict_after_a_compaction_wins_even_when_another_writers_clock_was_ahead(tmp_path: Path) -> None:
    """A part's name is its place in the write order, taken from the writer's clock. With
    a part written by a host whose clock ran a minute ahead, a verdict written after it
    (by this host) was named before it; harmless while only that part outranked it, but
    once a compaction had merged both earlier parts under the newest one's name, the
    merged part's every row outranked it: the compacted table said malicious where the
    same table never compacted said benign. Appends now name their part after the newest."""
    ahead = (datetime.now(UTC) + timedelta(minutes=1)).strftime("%Y%m%dT%H%M%S%fZ")
    twins = [tmp_path / "never-compacted", tmp_path / "compacted"]
    for data in twins:
        record_feedback(data, [{"event_id": "e2", "label": "malicious"}])
        late = pl.DataFrame([{"event_id": "e1", "label": "benign", "analyst": None, "note": None, "source": "api",
                              "recorded_at": T0, "seq": 0}], schema=FEEDBACK_SCHEMA)
        late.write_parquet(data / io.FEEDBACK / f"part-{ahead}-0a0a0a0a.parquet")  # the other host's verdict
    compact_table(twins[1], io.FEEDBACK)
    written = [record_feedback(data, [{"event_id": "e2", "label": "benign"}]).path for data in twins]
    assert [_labels(data)["e2"] for data in twins] == ["benign", "benign"]
    assert [io.table_part_files(data, io.FEEDBACK)[-1] for data in twins] == written  # named after the newest


def _rename_sources(part: Path, names: list[str]) -> None:
    """Rewrite ``part``'s ``uba.merged_parts`` (its rows kept) as a hand or a bug might."""
    pl.read_parquet(part).write_parquet(part, metadata={io.MERGED_PARTS_KEY: json.dumps(names)})


@pytest.mark.parametrize("loop", ["itself", "through-another"])
def test_a_merged_part_that_names_itself_is_refused_not_read_as_gone(tmp_path: Path, loop: str) -> None:
    """A merged part whose metadata named itself (or a merged part that names it) among
    the parts it replaces was read as gone, so the table read empty, and the next
    compaction deleted it as a leftover: every row lost without a word."""
    data = tmp_path / "data"
    for k in range(3):
        record_feedback(data, [{"event_id": f"e{k}", "label": "benign"}])
    compact_table(data, io.FEEDBACK)
    (first,) = io.table_part_files(data, io.FEEDBACK)
    if loop == "itself":
        _rename_sources(first, [first.name])
        named = first
    else:
        for k in range(2):
            record_feedback(data, [{"event_id": f"n{k}", "label": "benign"}])
        compact_table(data, io.FEEDBACK, min_parts=2)  # merges the first merged part and the two new ones
        (second,) = io.table_part_files(data, io.FEEDBACK)
        # brought back from a backup, naming the part that replaced it
        pl.DataFrame(schema=FEEDBACK_SCHEMA).write_parquet(first, metadata={io.MERGED_PARTS_KEY:
                                                                             json.dumps([second.name])})
        named = min(first, second)
    labels = tmp_path / "labels.csv"
    labels.write_text("event_id,label\ne0,malicious\n")
    for argv in (["tables", "compact", "--table", "feedback"], ["feedback", str(labels)]):
        out = subprocess.run([BATCH, *argv, "--data-dir", str(data)], capture_output=True, text=True)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert f"the merged table part {named} names itself among the parts it replaces" in out.stderr
    assert named.exists() and len(io.listed_table_parts(data, io.FEEDBACK)) == (1 if loop == "itself" else 2)


def test_the_cli_offers_every_compacted_table() -> None:
    """``tables compact --table`` lists the tables without importing the compaction
    module (Polars) at start-up: the two lists must be one."""
    from jobs.commands.tables import TABLE_NAMES
    from uba.alerting.compaction import TABLES

    assert TABLE_NAMES == TABLES
