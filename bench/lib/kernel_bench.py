"""What the sandbox-kernel benchmarks share: their command line, running themselves in the
user-mode-linux guest, and the figures read back as JSON.

A kernel benchmark's main() is ``main`` here, given what differs between them: its module,
default sizes, its own integer options (passed on to the guest), what --quick shrinks, the
cluster for a size, and ``measure``, which runs in the guest on the cluster files and says
whether every figure came from a correct state. On the host, ``main`` writes one cluster
file per size and boots the guest once, running ``python -m MODULE --in-guest FILE...``
there; in the guest it measures, prints the result check and writes the figures (the
module's RESULTS) where the host asked for them (run_all.py reads that JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

# The tree's top: the guest runs the benchmark as a module from there.
ROOT = Path(__file__).resolve().parents[2]

# Virtual servers per generated Service on average (gen_cluster.build: one Service in ten
# has a UDP port, one in twenty is dual-stack).
VS_PER_SERVICE = 1.1 * 1.05

# The variable naming the file, inside the guest, that the figures are written to.
JSON_ENV = "BENCH_JSON"

# The test kernels a benchmark can run in (testkit's sandbox): uml is the default; qemu has
# what uml lacks (nftables nat chains), several times slower.
GUESTS = ("uml", "qemu")


def main(
    doc: str,
    module: str,
    *,
    sizes: Sequence[int],
    options: Mapping[str, tuple[int, str | None]],
    quick: Mapping[str, Any],
    quick_help: str,
    cluster: Callable[[int, int], dict[str, Any]],
    measure: Callable[[list[str], argparse.Namespace], bool],
    results: dict[str, dict[str, Any]],
    endpoints_help: str | None = None,
    argv: Sequence[str] | None = None,
) -> int:
    """A kernel benchmark's whole command: parse, then run on the host or in the guest.

    options: the benchmark's own integer options, name -> (default, help), given to the
    guest as they were parsed; quick: the values --quick sets (sizes and options);
    cluster(size, endpoints): the cluster for one size; measure(files, args): in the guest,
    whether every figure, put in results, came from a correct state."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(sizes))
    parser.add_argument("--endpoints", type=int, default=3, help=endpoints_help)
    for name, (default, help_text) in options.items():
        parser.add_argument(f"--{name}", type=int, default=default, help=help_text)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", metavar="FILE", help="also write the figures here, as JSON")
    parser.add_argument(
        "--guest",
        choices=GUESTS,
        default="uml",
        help="the test kernel: user-mode-linux, or Debian's generic kernel under qemu (TCG)",
    )
    parser.add_argument("--in-guest", nargs="+", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.in_guest:
        quiet_logs()
        return finish_in_guest(measure(args.in_guest, args), results)
    if args.quick:
        for name, value in quick.items():
            setattr(args, name, value)
    return run_on_host(
        module,
        sizes=args.sizes,
        cluster=lambda size: cluster(size, args.endpoints),
        guest_args=[arg for name in options for arg in (f"--{name}", str(getattr(args, name)))],
        json_target=args.json,
        guest=args.guest,
    )


def services_for(virtual_servers: int) -> int:
    """How many Services gen_cluster.build needs for about this many virtual servers."""
    return round(virtual_servers / VS_PER_SERVICE)


def quiet_logs() -> None:
    """Inside the guest: only warnings, so that the figures are not buried."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def finish_in_guest(ok: bool, results: dict[str, dict[str, Any]]) -> int:
    """Print the result check, write the figures for the host; the guest's exit status."""
    print("\nresult check:", "ok" if ok else "WRONG")
    if os.environ.get(JSON_ENV):
        with open(os.environ[JSON_ENV], "w") as out:
            json.dump({"ok": ok, "sizes": results}, out, indent=1)
    return 0 if ok else 1


def run_on_host(
    module: str,
    *,
    sizes: Sequence[int],
    cluster: Callable[[int], dict[str, Any]],
    guest_args: Sequence[str],
    json_target: str | None,
    guest: str = "uml",
) -> int:
    """Write cluster(size) for each size, boot the guest once and run `python -m module
    --in-guest` there on those files, echoing its output; copy its figures to json_target
    if asked. guest: "uml" or "qemu" (GUESTS)."""
    from ipvsproxy_testkit.sandbox.qemu import run_in_qemu
    from ipvsproxy_testkit.sandbox.uml import run_in_guest, shared_tempdir

    workdir = shared_tempdir("ipvsproxy-bench-")
    results = os.path.join(workdir, "results.json")
    try:
        files = []
        for size in sizes:
            path = os.path.join(workdir, f"cluster-{size}.json")
            with open(path, "w") as out:
                json.dump(cluster(size), out)
            files.append(path)
        run = run_in_qemu if guest == "qemu" else run_in_guest
        result = run(
            [sys.executable, "-m", module, *guest_args, "--in-guest", *files],
            timeout=3600 if guest == "qemu" else 1800,
            mem="2G" if guest == "qemu" else "1G",
            # unbuffered: each size's figures reach the host as soon as they are printed
            env={JSON_ENV: results, "PYTHONUNBUFFERED": "1"},
            cwd=str(ROOT),
            on_output=lambda chunk: print(chunk, end="", flush=True),
        )
        if json_target and os.path.exists(results):
            subprocess.run(["cp", results, json_target], check=True)
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    how = ", qemu TCG" if guest == "qemu" else ", user-mode-linux"
    print(f"(guest kernel {result.kernel_release}{how}; {os.cpu_count()} host cores, shared)")
    return result.exit_status
