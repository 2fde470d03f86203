"""``ray start --address ...`` for a second node on this machine, kept on 127.0.0.1.

Ray 2.60 refuses to start a joining node unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` is
1, and with it set to 1 it replaces every loopback address with the machine's network
address, so the node's traffic would leave loopback (DESIGN.md, "Running Ray on a closed
machine"). This runs Ray's own ``ray start`` command with that variable at 0 (every
address stays 127.0.0.1) and only the CLI's "multi-node clusters are not supported"
check told that clusters are enabled. Usage: ``python ray_start_node.py <ray start args>``.
"""

from __future__ import annotations

import sys
import types


class _ClusterEnabled(types.ModuleType):
    """``ray._private.ray_constants`` as the CLI sees it, with clusters enabled."""

    def __init__(self, real: types.ModuleType) -> None:
        super().__init__(real.__name__)
        self._real = real

    def __getattr__(self, name: str) -> object:
        return True if name == "ENABLE_RAY_CLUSTER" else getattr(self._real, name)


def main() -> None:
    import ray._private.ray_constants as constants
    from ray.scripts import scripts

    scripts.ray_constants = _ClusterEnabled(constants)
    sys.argv = ["ray", "start", *sys.argv[1:]]
    scripts.main()


if __name__ == "__main__":
    main()
