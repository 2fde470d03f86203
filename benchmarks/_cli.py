"""The product's CLI as the benchmarks run it: a real ``uba-batch`` process with Ray kept
on loopback and quiet, failing the benchmark with the command's own error text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def uba_batch(*args: str, cwd: Path) -> str:
    """Run ``uba-batch ARGS`` in ``cwd``; its stdout, or exit naming the command and its stderr."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    done = subprocess.run([str(Path(sys.executable).parent / "uba-batch"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"uba-batch {args[0]} failed ({done.returncode}) in {cwd}:\n{done.stderr[-4000:]}")
    return done.stdout
