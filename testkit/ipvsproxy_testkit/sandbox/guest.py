"""What every sandbox guest shares, whichever kernel boots it.

A guest boots a real Linux kernel on the host's own root filesystem (user-mode-linux's
hostfs, or 9p under qemu), runs one payload in it as root and stops. This module holds the
parts that do not depend on how the kernel is started: the init script that prepares the
guest and runs the payload, the modules it loads, the payload's environment, and reading
back what the payload wrote into a private host directory.

Everything a guest writes to the filesystem lands on the host's disk. The init script
therefore puts tmpfs over every directory the guest scribbles in (/run, the scratch
directory, TMPDIR) and writes only into one private host directory, which the caller removes
after the payload's output has been read back.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ipvsproxy.errors import SandboxError

__all__ = [
    "GUEST_SCRATCH",
    "OPTIONAL_MODULES",
    "REQUIRED_MODULES",
    "GuestResult",
    "boot",
    "guest_env",
    "init_script",
    "modprobe_helper",
    "shared_tempdir",
    "write_box",
]

# Loaded before the payload starts; a failure names the module and aborts the boot.
# modprobe treats a built-in module as loaded, so a kernel building one in is fine.
REQUIRED_MODULES: tuple[str, ...] = (
    "ipv6",
    "nf_conntrack",
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_sh",
    "dummy",
    "veth",
    "ip_set",
    "ip_set_hash_ip",
    "ip_set_hash_ipport",
    "ip_set_hash_ipportip",
    "ip_set_hash_ipportnet",
    "ip_set_hash_net",
    "ip_set_bitmap_port",
    "xt_set",
    "xt_ipvs",
    "xt_comment",
    "xt_mark",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_conntrack",
    "xt_tcpudp",
    "ipt_REJECT",
    "ip6t_REJECT",
    "iptable_nat",
    "iptable_filter",
    "ip6table_nat",
    "ip6table_filter",
)

# Loaded when the module tree has them (kernel versions and configs differ). Anything else
# the kernel asks for (an iptables extension, an ipset type) is loaded on demand through the
# modprobe helper the init script installs.
OPTIONAL_MODULES: tuple[str, ...] = (
    "ip_vs_mh",
    "xt_physdev",
    "xt_nat",
    "xt_multiport",
    "xt_statistic",
    "xt_state",
    "iptable_mangle",
    "ip6table_mangle",
    "nf_conntrack_netlink",
    "sctp",
)

# Inside the guest: a tmpfs, never visible on the host.
GUEST_SCRATCH = "/run/ipvsproxy-sandbox"

# Mounted afresh inside the guest: host files below them are out of its sight.
_GUEST_MOUNTS = ("/dev", "/proc", "/sys", "/run")
_CONSOLE_TAIL = 4000
_STARTED_MARK = "started"


@dataclass(frozen=True)
class GuestResult:
    """What one guest boot produced.

    ``output`` is the payload's stdout and stderr interleaved, read from a file the payload
    wrote on the shared filesystem. ``console`` is what the kernel console printed (boot
    messages, oopses), for diagnosis. ``boot_seconds`` is wall time from starting the kernel
    to starting the payload; ``elapsed_seconds`` covers the whole run.
    """

    exit_status: int
    output: str
    kernel_release: str
    console: str
    boot_seconds: float
    elapsed_seconds: float


def shared_tempdir(prefix: str) -> Path:
    """A new private directory that the guest sees at the same path.

    The guest mounts its own /dev, /proc, /sys and /run, so a host TMPDIR below one of
    those (/dev/shm, /run/user/...) would be invisible to it; /tmp is used instead. So is it
    for a TMPDIR with blanks, which a kernel command line cannot carry.
    """
    base = Path(tempfile.gettempdir()).resolve()
    hidden = any(base == Path(top) or Path(top) in base.parents for top in _GUEST_MOUNTS)
    if hidden or any(ch.isspace() for ch in str(base)):
        base = Path("/tmp")
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def guest_env(env: Mapping[str, str] | None, venv: str | None) -> dict[str, str]:
    """The payload's whole environment: PATH with ``venv`` first, HOME, LANG, TMPDIR, ``env``."""
    if venv is None and sys.prefix != sys.base_prefix:
        venv = sys.prefix
    path = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    if venv is not None:
        path.insert(0, os.path.join(venv, "bin"))
    result = {
        "PATH": ":".join(path),
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TMPDIR": f"{GUEST_SCRATCH}/tmp",
    }
    if venv is not None:
        result["VIRTUAL_ENV"] = venv
    result.update(env or {})
    return result


def modprobe_helper(*, refuse_nf_tables: bool) -> str:
    """What the guest kernel runs to load a module on demand (as: modprobe -q -- NAME).

    ``refuse_nf_tables`` is for kernels without NF_TABLES_IPV4/IPV6 (user-mode-linux): there
    the nft backend of iptables would half work (the module loads, ``iptables-nft-save``
    succeeds, every nat table fails) and mislead backend detection; refused, the guest is a
    plain iptables-legacy node.
    """
    scratch = shlex.quote(GUEST_SCRATCH)
    refuse = ""
    if refuse_nf_tables:
        refuse = (
            f'case "$(modprobe -d {scratch} --show-depends "$name" 2>/dev/null)" in\n'
            "    */nf_tables.ko*) exit 1 ;;\n"
            "esac\n"
        )
    return f'#!/bin/sh\nfor name; do :; done\n{refuse}exec modprobe -d {scratch} "$@"\n'


def init_script(
    *,
    box: Path,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    modules: str,
    required: Sequence[str],
    optional: Sequence[str],
    halt: str,
    kernel_name: str,
    interactive: bool = False,
) -> str:
    """The guest's init (PID 1 on the real root): prepare the guest, run the payload, stop.

    ``modules`` is a host directory holding ``<kernel release>/``, the guest kernel's module
    tree; ``required`` modules are loaded unless /proc/modules lists them already (an
    initramfs may have loaded them), ``optional`` ones when the tree has them. ``halt`` is
    the command that ends the guest (its kernel exits then). ``interactive``: the payload
    gets the console as its terminal instead of writing to the output file.
    """
    q = shlex.quote
    assignments = " ".join(q(f"{key}={value}") for key, value in env.items())
    command = f"env -i {assignments} {shlex.join(argv)}"
    if interactive:
        # The console becomes the payload's controlling terminal (setsid -c), so that a
        # shell gets job control and Ctrl-C reaches the guest's foreground job.
        run = f"setsid -c -w {command} < /dev/console > /dev/console 2>&1"
    else:
        run = f'{command} > "$box/output" 2>&1 < /dev/null'
    return f"""#!/bin/sh
# PID 1 of a {kernel_name} guest booted by ipvsproxy_testkit.sandbox (generated).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
box={q(str(box))}
scratch={q(GUEST_SCRATCH)}

stop() {{
    sync
    {halt}
    sleep 60
}}
fail() {{
    printf '%s\\n' "$*" > "$box/setup-error"
    stop
}}

# /run before anything else: `ip netns add` keeps its files in /run/netns, and on the
# host's filesystem they would outlive this boot and make the next one's fail.
mount -t tmpfs -o mode=0755 tmpfs /run || fail "cannot mount a tmpfs on /run"
mount -t proc proc /proc || fail "cannot mount /proc"
mount -t sysfs sysfs /sys || fail "cannot mount /sys"
# The kernel mounts devtmpfs on /dev; give it what programs expect next to the devices.
if grep -q '^devtmpfs /dev ' /proc/mounts; then
    mkdir -p /dev/shm /dev/pts
    mount -t tmpfs -o mode=1777 tmpfs /dev/shm
    mount -t devpts devpts /dev/pts
    ln -sf /proc/self/fd /dev/fd
fi
mkdir -p "$scratch/lib/modules" "$scratch/tmp" || fail "cannot create $scratch"
chmod 1777 "$scratch/tmp"

release=$(uname -r)
printf '%s\\n' "$release" > "$box/release"
# The host has no /lib/modules; `modprobe -d` finds the tree under the scratch directory.
mount --bind {q(modules)} "$scratch/lib/modules" || fail "cannot bind-mount modules"
[ -d "$scratch/lib/modules/$release" ] || \\
    fail "no modules for guest kernel $release in {modules} (package mismatch?)"
# The kernel runs /proc/sys/kernel/modprobe to load modules on demand (iptables extensions,
# ipset types, IPVS schedulers); point it at the same tree.
command -v modprobe > /dev/null || fail "modprobe not found (install the package kmod)"
echo "$box/modprobe" > /proc/sys/kernel/modprobe
# Each modprobe costs seconds in an emulated guest: skip what is loaded already.
loaded=" $(cut -d ' ' -f 1 /proc/modules | tr '\\n' ' ') "
required=
for m in {" ".join(required)}; do
    case "$loaded" in *" $m "*) ;; *) required="$required $m" ;; esac
done
optional=
for m in {" ".join(optional)}; do
    modprobe -d "$scratch" -n "$m" > /dev/null 2>&1 && optional="$optional $m"
done
# One modprobe for all is fast; on failure, retry one by one to name the culprits.
if [ -n "$required$optional" ] && \
        ! modprobe -d "$scratch" -a $required $optional 2> "$scratch/modprobe.log"; then
    failed=
    for m in $required $optional; do
        modprobe -d "$scratch" "$m" 2>> "$scratch/modprobe.log" || failed="$failed $m"
    done
    [ -z "$failed" ] || fail "kernel modules failed to load:$failed: $(cat "$scratch/modprobe.log")"
fi

ip link set lo up || fail "cannot bring lo up"
cd {q(cwd)} || fail "cannot change to directory {cwd}"
date +%s.%N > "$box/{_STARTED_MARK}"
{run}
printf '%s\\n' "$?" > "$box/status"
stop
"""


class RunInGuest(Protocol):
    """How a guest kernel runs one payload (``uml.run_in_guest``, ``qemu.run_in_qemu``).

    Boot the guest, run one payload in it as root, and return its status and output.
    ``argv_or_script`` is either an argument vector or the text of a /bin/sh script.
    ``timeout`` (seconds) covers boot, payload and shutdown; when it expires the whole guest
    is killed and SandboxError is raised. The payload sees a minimal environment: PATH (with
    ``venv``'s bin directory first; by default the running interpreter's virtualenv, if any),
    HOME, LANG and a tmpfs TMPDIR, then ``env`` on top. ``cwd`` defaults to the current
    directory. ``on_output`` receives the payload's output as it is written, in chunks.
    A payload that fails is not an error: its exit status is returned.
    """

    def __call__(
        self,
        argv_or_script: Sequence[str] | str,
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        mem: str = "1G",
        cwd: str | None = None,
        venv: str | None = None,
        on_output: Callable[[str], None] | None = None,
    ) -> GuestResult: ...


@dataclass(frozen=True, slots=True)
class Payload:
    """One run's scratch directory (the host's and the guest's, at the same path) and what
    the guest's init script needs to start the payload."""

    box: Path
    argv: list[str]
    env: dict[str, str]
    cwd: str

    def write_init(self, script: str) -> Path:
        """Write the guest's init script into the box; its path."""
        init = self.box / "init"
        init.write_text(script)
        init.chmod(0o755)
        return init


@contextlib.contextmanager
def payload_box(
    prefix: str,
    argv_or_script: Sequence[str] | str,
    *,
    env: Mapping[str, str] | None,
    venv: str | None,
    cwd: str | None,
    refuse_nf_tables: bool,
) -> Iterator[Payload]:
    """The start every RunInGuest shares: a shared scratch directory holding the payload
    and the modprobe helper (see write_box), removed afterwards."""
    workdir = os.path.abspath(cwd if cwd is not None else os.getcwd())
    box = shared_tempdir(prefix)
    try:
        argv = write_box(box, argv_or_script, refuse_nf_tables=refuse_nf_tables)
        yield Payload(box=box, argv=argv, env=guest_env(env, venv), cwd=workdir)
    finally:
        shutil.rmtree(box, ignore_errors=True)


def write_box(
    box: Path,
    argv_or_script: Sequence[str] | str,
    *,
    refuse_nf_tables: bool,
) -> list[str]:
    """Write the payload script (if given as text) and the modprobe helper into ``box``.

    Returns the payload's argument vector.
    """
    if isinstance(argv_or_script, str):
        (box / "payload.sh").write_text(argv_or_script)
        payload = ["/bin/sh", str(box / "payload.sh")]
    else:
        payload = list(argv_or_script)
        if not payload:
            raise SandboxError("empty command for the guest")
    helper = box / "modprobe"
    helper.write_text(modprobe_helper(refuse_nf_tables=refuse_nf_tables))
    helper.chmod(0o755)
    return payload


def boot(
    cmdline: list[str],
    *,
    host_env: Mapping[str, str],
    box: Path,
    timeout: float,
    on_output: Callable[[str], None] | None,
    kernel_name: str,
    interactive: bool = False,
) -> GuestResult:
    """Run the kernel process ``cmdline`` to its end and read back what the payload left.

    ``interactive``: the kernel process gets this process's stdin and stdout (the host
    terminal in raw mode meanwhile), and its console is not captured.
    """
    with _raw_terminal(interactive):
        return _boot(
            cmdline,
            host_env=host_env,
            box=box,
            timeout=timeout,
            on_output=on_output,
            kernel_name=kernel_name,
            interactive=interactive,
        )


@contextlib.contextmanager
def _raw_terminal(interactive: bool) -> Iterator[None]:
    if not (interactive and sys.stdin.isatty()):
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _boot(
    cmdline: list[str],
    *,
    host_env: Mapping[str, str],
    box: Path,
    timeout: float,
    on_output: Callable[[str], None] | None,
    kernel_name: str,
    interactive: bool,
) -> GuestResult:
    start = time.time()
    # Own process group: UML runs each guest address space as a host child process, and a
    # timeout must take all of them down.
    proc = subprocess.Popen(
        cmdline,
        stdin=None if interactive else subprocess.DEVNULL,
        stdout=None if interactive else subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(host_env),
        start_new_session=True,
    )
    done = threading.Event()
    follower: threading.Thread | None = None
    if on_output is not None:
        follower = threading.Thread(
            target=_follow, args=(box / "output", on_output, done), daemon=True
        )
        follower.start()
    try:
        try:
            raw, _ = proc.communicate(timeout=timeout)
            raw = raw or b""  # nothing captured when interactive
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raw, _ = proc.communicate()
            raw = raw or b""
            raise SandboxError(
                f"{kernel_name} guest did not finish within {timeout:g} s; "
                f"console tail:\n{_tail(raw)}"
            ) from None
    finally:
        _kill_group(proc)
        done.set()
        if follower is not None:
            follower.join()
    elapsed = time.time() - start
    console = raw.decode("utf-8", errors="replace")
    setup_error = box / "setup-error"
    if setup_error.exists():
        raise SandboxError(
            f"guest setup failed: {setup_error.read_text().strip()}\nconsole tail:\n{_tail(raw)}"
        )
    status_file = box / "status"
    if not status_file.exists():
        output_file = box / "output"
        partial = output_file.read_bytes() if output_file.exists() else b""
        raise SandboxError(
            f"{kernel_name} guest stopped before the payload finished ({cmdline[0]} exit "
            f"status {proc.returncode})\npayload output (tail):\n{_tail(partial)}\n"
            f"console (tail):\n{_tail(raw)}"
        )
    try:
        exit_status = int(status_file.read_text().strip())
    except ValueError:
        raise SandboxError(f"unreadable exit status {status_file.read_text()!r}") from None
    output_file = box / "output"
    output = output_file.read_text(errors="replace") if output_file.exists() else ""
    release_file = box / "release"
    release = release_file.read_text().strip() if release_file.exists() else "unknown"
    try:
        started = float((box / _STARTED_MARK).read_text())
        boot_seconds = max(0.0, started - start)
    except (OSError, ValueError):
        boot_seconds = float("nan")
    return GuestResult(
        exit_status=exit_status,
        output=output,
        kernel_release=release,
        console=console,
        boot_seconds=boot_seconds,
        elapsed_seconds=elapsed,
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The group outlives its leader while UML's helper processes exit.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _follow(path: Path, sink: Callable[[str], None], done: threading.Event) -> None:
    """Pass on what the guest appends to ``path`` until ``done`` is set, then the rest."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offset = 0
    while True:
        finished = done.wait(0.2)
        try:
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            offset += len(chunk)
            text = decoder.decode(chunk)
            if text:
                sink(text)
        if finished:
            rest = decoder.decode(b"", final=True)
            if rest:
                sink(rest)
            return


def _tail(raw: bytes, limit: int = _CONSOLE_TAIL) -> str:
    text = raw.decode("utf-8", errors="replace")
    return text[-limit:] if len(text) > limit else text
