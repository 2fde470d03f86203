"""The worker side of a Ray run imports nothing heavy before its task runs.

Polars sizes its thread pool once, at import, so a worker can cap it only if unpickling a
task (its function and arguments) has not imported Polars yet (``uba.scoring.ray_worker``).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from uba.scoring.context import FaultInjection, ShardContext
from uba.scoring.plan import Piece, ShardSpec
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
