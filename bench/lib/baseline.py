"""Running a benchmark against another tree's ipvsproxy package (--baseline TREE), so that
two versions are measured side by side by the same benchmark code.

TREE holds an ipvsproxy package: an export of main, say (`git archive main ipvsproxy | tar
-x -C TREE`), or a whole checkout. The benchmark modules always come from this tree.
bench_agent imports either ipvsproxy layout (the flat one, or core/ and agent/);
bench_convert needs k8s/ alone, the same in both.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The tree's top: benchmarks run as modules from there (`python -m bench.x`).
ROOT = Path(__file__).resolve().parents[2]

# argv after -c: [tree, module, options...]. bench is imported before TREE goes ahead on
# the path, so that a whole checkout given as TREE cannot lend its own bench/; the editable
# install's finder is dropped, or it would answer for ipvsproxy before TREE does.
_BOOTSTRAP = """
import runpy, sys
tree, module = sys.argv[1], sys.argv[2]
import bench
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, tree)
sys.argv = sys.argv[2:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def command(module: str, tree: str | None, *options: str) -> list[str]:
    """The argv that runs `python -m module options` (from ROOT: pass cwd=ROOT), with the
    ipvsproxy package of tree when one is given, else this tree's."""
    if not tree:
        return [sys.executable, "-m", module, *options]
    return [sys.executable, "-c", _BOOTSTRAP, os.path.abspath(tree), module, *options]
