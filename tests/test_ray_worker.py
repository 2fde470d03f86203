"""The worker side of a Ray run imports nothing heavy before its task runs.

Polars sizes its thread pool once, at import, so a worker can cap it only if unpickling a
task (its function and arguments) has not imported Polars yet (``uba.scoring.ray_worker``).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from uba import io
from uba.scoring.context import FaultInjection, ShardContext
from uba.scoring.plan import Piece, ShardSpec, plan_shards
from uba.scoring.ray_backend import _named

REPO = Path(__file__).resolve().parents[1]

UNPICKLE = """
import pickle, sys
import uba.scoring.ray_worker
spec, ctx = pickle.loads(bytes.fromhex(sys.argv[1]))
assert ctx.fault.shard_delay_sec == 0.5 and spec.pieces[0].rows == 7
print(sorted(m for m in ("polars", "pyarrow", "numba", "uba.settings", "uba.scoring.shard") if m in sys.modules))
"""


def test_unpickling_a_shard_task_imports_neither_polars_nor_the_shard_code() -> None:
    spec = ShardSpec(3, (Piece("/data/events/part-0.parquet", 0, 7),))
    ctx = ShardContext(run_key="r1", day=date(2026, 3, 1), model_version="v1", max_reasons=3,
                       staging="/out/.staging/run-r1", fault=FaultInjection(shard_delay_sec=0.5))
    payload = pickle.dumps((spec, ctx)).hex()
    result = subprocess.run([sys.executable, "-c", UNPICKLE, payload], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # pyarrow comes with plan (its footer reads); Polars, numba and the settings do not
    assert result.stdout.strip() == "['pyarrow']"


def test_a_task_names_a_module_level_function() -> None:
    from uba.scoring.shard import merge_flagged

    assert _named(merge_flagged) == ("uba.scoring.shard", "merge_flagged")
    with pytest.raises(ValueError, match="module-level function"):
        _named(lambda: None)

    def local() -> None: ...

    with pytest.raises(ValueError, match="module-level function"):
        _named(local)


# What a worker never needs: the driver hands a shard plain values (ShardContext,
# ShardInputs), yet an import of the settings module cost each worker start ~0.2 s of CPU.
SETTINGS_MODULES = ("uba.settings", "pydantic", "pydantic_settings", "yaml")
# once numba is imported, yaml is too: numba.core.config imports it to read an optional
# .numba_config.yaml, which this project cannot avoid without changing numba's behaviour
BESIDE_NUMBA = tuple(m for m in SETTINGS_MODULES if m != "yaml")

WARM_UP = """
import json, sys
from uba.scoring.ray_worker import cap_threads
cap_threads()
seen = {}
import uba.scoring.shard
seen["shard"] = sorted(m for m in sys.argv[1:] if m in sys.modules)
from uba.model.forest import import_compiled_loops
import_compiled_loops(shard=True)
import_compiled_loops()
seen["loops"] = sorted(m for m in sys.argv[1:] if m in sys.modules)
seen["numba"] = "numba" in sys.modules
print(json.dumps(seen))
"""


def test_the_shard_code_and_its_compiled_loops_import_no_settings() -> None:
    """What ``warm_up`` imports and loads in a fresh worker, and the API's batch loops too."""
    result = subprocess.run([sys.executable, "-c", WARM_UP, *SETTINGS_MODULES], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["shard"] == []
    assert seen["numba"] and not set(BESIDE_NUMBA) & set(seen["loops"])


RUN_SHARD = """
import json, pickle, sys
from uba.scoring.ray_worker import cap_threads
cap_threads()
from uba.scoring.shard import run_shard
with open(sys.argv[1], "rb") as f:
    spec, ctx, inputs = pickle.load(f)
result = run_shard(spec, ctx, inputs)
print(json.dumps({"rows": result.rows, "modules": sorted(m for m in sys.argv[2:] if m in sys.modules)}))
"""


def test_a_real_shard_runs_without_the_settings(shared_world, scoring_settings, tmp_path: Path) -> None:
    """The whole per-row pipeline of a shard, in a fresh process given what a Ray worker is
    given (the pickled spec, context and shared inputs)."""
    from uba.features import baselines_as_of
    from uba.model.bundle import load_bundle
    from uba.scoring.hooks import RunOperations
    from uba.scoring.shard import FLAGGED_PARTS_DIR, SCORES_DIR, ShardInputs

    day = shared_world.score_dates[0]
    settings = scoring_settings(tmp_path / "out")
    bundle = load_bundle(settings.paths.model_dir)
    ops = RunOperations.prepare(settings, bundle, day)
    inputs = ShardInputs(detector=bundle.detector, cuts=ops.cuts, rules=ops.rules, drift_reference=ops.reference,
                         baselines=baselines_as_of(settings.paths.data_dir, day, settings).collect())
    spec = plan_shards(io.partition_files(shared_world.data_dir, io.EVENTS, day), 10_000)[0]
    staging = tmp_path / "out" / "staging"
    for folder in (SCORES_DIR, FLAGGED_PARTS_DIR):
        (staging / folder).mkdir(parents=True)
    ctx = ShardContext(run_key="slim", day=day, model_version=bundle.version, max_reasons=3, staging=str(staging))
    task = tmp_path / "task.pickle"
    task.write_bytes(pickle.dumps((spec, ctx, inputs)))

    result = subprocess.run([sys.executable, "-c", RUN_SHARD, str(task), *SETTINGS_MODULES], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    shard = json.loads(result.stdout)
    assert shard["rows"] == io.partition_row_count(shared_world.data_dir, io.EVENTS, day) > 0
    assert sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*.parquet")) == [
        f"{FLAGGED_PARTS_DIR}/part-00000.parquet", f"{SCORES_DIR}/part-00000.parquet"]
    assert not set(BESIDE_NUMBA) & set(shard["modules"])


AGGREGATES_TASK = """
import json, pickle, sys
from uba.scoring.ray_worker import call
with open(sys.argv[1], "rb") as f:
    args = pickle.load(f)
written = call("uba.features.store", "ensure_aggregates", *args)
print(json.dumps({"written": [d.isoformat() for d in written],
                  "modules": sorted(m for m in sys.argv[2:] if m in sys.modules)}))
"""


def test_the_aggregates_task_of_a_run_imports_no_settings(shared_world, tmp_path: Path) -> None:
    """The driver sends D's aggregates task plain category names (``CategoryNames``), not the
    settings' pydantic section, and they are written as the settings would write them."""
    import shutil

    from uba.features import ensure_aggregates
    from uba.scoring.context import CategoryNames
    from uba.settings import EventSettings

    day = shared_world.score_dates[0]
    data = tmp_path / "data"
    shutil.copytree(shared_world.data_dir / io.EVENTS, data / io.EVENTS)
    task = tmp_path / "task.pickle"
    task.write_bytes(pickle.dumps((data, [day], CategoryNames.of(EventSettings()))))

    result = subprocess.run([sys.executable, "-c", AGGREGATES_TASK, str(task), *SETTINGS_MODULES], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["written"] == [day.isoformat()] and not set(SETTINGS_MODULES) & set(report["modules"])
    by_task = io.partition_files(data, io.AGGREGATES, day)
    # the same part the settings' own events section names: the tag (file name) is unchanged
    assert ensure_aggregates(data, [day], EventSettings()) == []
    assert io.partition_files(data, io.AGGREGATES, day) == by_task
