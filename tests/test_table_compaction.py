"""Compaction of the analysts' append-only tables (uba.alerting.compaction) on real files
and real processes: every answer read from a table is the same before and after, while
writers, readers and a killed compaction run beside it; ``score`` compacts after
publishing without making its own risk stale."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
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
