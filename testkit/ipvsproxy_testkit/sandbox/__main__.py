"""``python -m ipvsproxy_testkit.sandbox [--kernel uml|qemu] -- CMD ARGS...``: run a command
in a guest.

``uml`` (the default) is the user-mode-linux kernel (iptables' legacy backend); ``qemu`` is
Debian's generic kernel under qemu (both backends, nft included).

The command's output is streamed while it runs; the exit status is the command's, or 125
when the guest itself could not be run.
"""

from __future__ import annotations

import argparse
import sys

from ipvsproxy.errors import SandboxError
from ipvsproxy_testkit.sandbox.guest import RunInGuest
from ipvsproxy_testkit.sandbox.qemu import run_in_qemu
from ipvsproxy_testkit.sandbox.uml import run_in_guest

_SANDBOX_FAILED = 125


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ipvsproxy_testkit.sandbox",
        description="Run a command as root inside a guest kernel with IPVS.",
    )
    parser.add_argument(
        "--kernel",
        choices=("uml", "qemu"),
        default="uml",
        help="uml: user-mode-linux (default); qemu: Debian's generic kernel (iptables-nft)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--mem", default="1G", help="guest memory (default 1G)")
    parser.add_argument("--cwd", default=None, help="directory to run in (default: current)")
    parser.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a variable in the command's environment (repeatable)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print the kernel console afterwards"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = parser.parse_args(argv)
    command: list[str] = args.command
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        parser.error("no command given (use: -- CMD ARGS...)")
    env: dict[str, str] = {"PYTHONUNBUFFERED": "1"}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--env wants NAME=VALUE, got {item!r}")
        env[name] = value

    def show(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        run: RunInGuest = run_in_qemu if args.kernel == "qemu" else run_in_guest
        result = run(
            command, timeout=args.timeout, env=env, mem=args.mem, cwd=args.cwd, on_output=show
        )
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return _SANDBOX_FAILED
    if args.verbose:
        print(result.console, file=sys.stderr)
    print(
        f"sandbox: kernel {result.kernel_release}, boot {result.boot_seconds:.1f} s, "
        f"total {result.elapsed_seconds:.1f} s, exit status {result.exit_status}",
        file=sys.stderr,
    )
    return result.exit_status


if __name__ == "__main__":
    sys.exit(main())
