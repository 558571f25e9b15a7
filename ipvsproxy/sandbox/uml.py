"""Run a command inside a user-mode-linux guest: a real Linux kernel with IPVS.

The development and CI machines run a kernel without IPVS, the dummy link driver or
module loading. Debian's ``user-mode-linux`` package ships a Linux kernel that runs as an
ordinary process and has all of them as modules. The guest boots on the host's own root
filesystem (hostfs), so it runs the host's binaries and virtualenv unchanged; it has no
network device, so its traffic never leaves it.

Everything the guest writes to the filesystem lands on the host's disk. The generated init
script therefore puts tmpfs over every directory the guest scribbles in (/run, the scratch
directory, TMPDIR) and writes only into one private host directory, which is removed after
the payload's output has been read back.
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

from ipvsproxy.errors import SandboxError

__all__ = [
    "OPTIONAL_MODULES",
    "REQUIRED_MODULES",
    "GuestResult",
    "run_in_guest",
    "shared_tempdir",
    "uml_kernel",
]

UML_KERNEL = "linux.uml"
KERNEL_ENV = "IPVSPROXY_UML_KERNEL"
UML_MODULES = Path("/usr/lib/uml/modules")

# Loaded before the payload starts; a failure names the module and aborts the boot.
# modprobe treats a built-in module as loaded, so a later kernel building one in is fine.
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

# What the guest kernel runs to load a module on demand (as: modprobe -q -- NAME).
# nf_tables is refused: this kernel lacks NF_TABLES_IPV4/IPV6, so the nft backend of iptables
# would half work (the module loads, `iptables-nft-save` succeeds, every nat table fails) and
# mislead backend detection. Without it the guest is a plain iptables-legacy node.
_MODPROBE_HELPER = """#!/bin/sh
for name; do :; done
case "$(modprobe -d {scratch} --show-depends "$name" 2>/dev/null)" in
    */nf_tables.ko*) exit 1 ;;
esac
exec modprobe -d {scratch} "$@"
"""

# Mounted afresh inside the guest: host files below them are out of its sight.
_GUEST_MOUNTS = ("/dev", "/proc", "/sys", "/run")
_CONSOLE_TAIL = 4000
_STARTED_MARK = "started"


@dataclass(frozen=True)
class GuestResult:
    """What one guest boot produced.

    ``output`` is the payload's stdout and stderr interleaved, read from a file the payload
    wrote on hostfs. ``console`` is what the kernel console printed (boot messages, oopses),
    for diagnosis. ``boot_seconds`` is wall time from starting the kernel to starting the
    payload; ``elapsed_seconds`` covers the whole run.
    """

    exit_status: int
    output: str
    kernel_release: str
    console: str
    boot_seconds: float
    elapsed_seconds: float


def uml_kernel() -> str:
    """Path of the user-mode-linux kernel binary; SandboxError naming the package if absent.

    ``IPVSPROXY_UML_KERNEL`` overrides the search (a self-built kernel, say).
    """
    override = os.environ.get(KERNEL_ENV)
    if override:
        if not os.access(override, os.X_OK):
            raise SandboxError(f"{KERNEL_ENV}={override} is not an executable file")
        return override
    found = shutil.which(UML_KERNEL) or shutil.which(UML_KERNEL, path="/usr/bin:/usr/local/bin")
    if found is None:
        raise SandboxError(
            f"{UML_KERNEL} not found: the kernel tests need the user-mode-linux kernel "
            "(Debian/Ubuntu: apt-get install user-mode-linux ipvsadm ipset iptables kmod)"
        )
    if not UML_MODULES.is_dir():
        raise SandboxError(
            f"{UML_MODULES} is missing: reinstall the Debian package user-mode-linux, "
            "which ships the guest kernel's modules there"
        )
    return found


def run_in_guest(
    argv_or_script: Sequence[str] | str,
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    mem: str = "1G",
    cwd: str | None = None,
    venv: str | None = None,
    on_output: Callable[[str], None] | None = None,
    interactive: bool = False,
) -> GuestResult:
    """Boot a guest, run one payload in it as root, and return its status and output.

    ``argv_or_script`` is either an argument vector or the text of a /bin/sh script.
    ``timeout`` (seconds) covers boot, payload and shutdown; when it expires the whole guest
    is killed and SandboxError is raised. The payload sees a minimal environment: PATH (with
    ``venv``'s bin directory first; by default the running interpreter's virtualenv, if any),
    HOME, LANG and a tmpfs TMPDIR, then ``env`` on top. ``cwd`` defaults to the current
    directory. ``on_output`` receives the payload's output as it is written, in chunks.
    A payload that fails is not an error: its exit status is returned.

    ``interactive``: the payload's terminal is this process's (the guest console on our
    stdin and stdout, the host terminal put in raw mode meanwhile, so that the guest's
    own terminal handles echo, line editing and Ctrl-C); its output is not captured.
    """
    kernel = uml_kernel()
    if isinstance(argv_or_script, str):
        payload: list[str] | None = None
        script: str | None = argv_or_script
    else:
        payload = list(argv_or_script)
        script = None
        if not payload:
            raise SandboxError("empty command for the guest")
    workdir = os.path.abspath(cwd if cwd is not None else os.getcwd())
    box = shared_tempdir("ipvsproxy-uml-")
    # UML backs guest memory with a file in $TMPDIR. It unlinks that file at once; a private
    # directory, removed afterwards, makes sure nothing can outlive the run even so.
    memdir = Path(tempfile.mkdtemp(prefix="ipvsproxy-uml-mem-"))
    try:
        if script is not None:
            (box / "payload.sh").write_text(script)
            payload = ["/bin/sh", str(box / "payload.sh")]
        assert payload is not None
        guest_env = _guest_env(env, venv)
        helper = box / "modprobe"
        helper.write_text(_MODPROBE_HELPER.format(scratch=shlex.quote(GUEST_SCRATCH)))
        helper.chmod(0o755)
        init = box / "init"
        init.write_text(
            _init_script(box=box, argv=payload, env=guest_env, cwd=workdir, interactive=interactive)
        )
        init.chmod(0o755)
        cmdline = [
            kernel,
            f"mem={mem}",
            "root=/dev/root",
            "rootfstype=hostfs",
            "rootflags=/",
            "rw",
            f"init={init}",
            "con=null",
            "con0=fd:0,fd:1" if interactive else "con0=null,fd:1",
            # Boot chatter off; warnings, oopses and panics still reach the console.
            "quiet",
            # UML keeps a pid file and its management socket in ~/.uml/<umid> by default.
            f"uml_dir={box / 'uml'}",
        ]
        host_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(box),
            "TMPDIR": str(memdir),
            "LD_PRELOAD": str(_build_xstate_shim(box)),
        }
        with _raw_terminal(interactive):
            return _boot(
                cmdline,
                host_env=host_env,
                box=box,
                timeout=timeout,
                on_output=on_output,
                interactive=interactive,
            )
    finally:
        shutil.rmtree(box, ignore_errors=True)
        shutil.rmtree(memdir, ignore_errors=True)


_XSTATE_SHIM_SOURCE = Path(__file__).with_name("uml_xstate.c")


def _build_xstate_shim(box: Path) -> Path:
    """Compile the ptrace shim that lets UML 6.1 boot on CPUs with a large XSAVE area.

    Without it the guest panics at once on such hosts ("ptrace set fp regs failed, errno =
    14"; see uml_xstate.c). Compiling takes well under a second, so it is built per run
    into the run's private directory rather than cached.
    """
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise SandboxError(
            "gcc not found: the sandbox compiles a small ptrace shim for "
            "user-mode-linux (Debian: apt-get install gcc)"
        )
    library = box / "uml_xstate.so"
    built = subprocess.run(
        [
            compiler,
            "-shared",
            "-fPIC",
            "-O2",
            "-o",
            str(library),
            str(_XSTATE_SHIM_SOURCE),
            "-ldl",
            "-lpthread",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        raise SandboxError(f"cannot compile {_XSTATE_SHIM_SOURCE.name}: {built.stderr.strip()}")
    return library


def shared_tempdir(prefix: str) -> Path:
    """A new private directory that the guest sees at the same path (through hostfs).

    The guest mounts its own /dev, /proc, /sys and /run, so a host TMPDIR below one of
    those (/dev/shm, /run/user/...) would be invisible to it; /tmp is used instead. So is it
    for a TMPDIR with blanks, which the kernel command line (init=PATH) cannot carry.
    """
    base = Path(tempfile.gettempdir()).resolve()
    hidden = any(base == Path(top) or Path(top) in base.parents for top in _GUEST_MOUNTS)
    if hidden or any(ch.isspace() for ch in str(base)):
        base = Path("/tmp")
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _guest_env(env: Mapping[str, str] | None, venv: str | None) -> dict[str, str]:
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


def _init_script(
    *, box: Path, argv: Sequence[str], env: Mapping[str, str], cwd: str, interactive: bool = False
) -> str:
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
# PID 1 of a user-mode-linux guest booted by ipvsproxy.sandbox.uml (generated).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
box={q(str(box))}
scratch={q(GUEST_SCRATCH)}

stop() {{
    sync
    halt -f || poweroff -f || echo o > /proc/sysrq-trigger
    sleep 60
}}
fail() {{
    printf '%s\\n' "$*" > "$box/setup-error"
    stop
}}

# /run before anything else: `ip netns add` keeps its files in /run/netns, and on hostfs
# they would outlive this boot and make the next one's `ip netns add` fail.
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
mount --bind /usr/lib/uml/modules "$scratch/lib/modules" || fail "cannot bind-mount modules"
[ -d "$scratch/lib/modules/$release" ] || \\
    fail "no modules for guest kernel $release in /usr/lib/uml/modules (package mismatch?)"
# The kernel runs /proc/sys/kernel/modprobe to load modules on demand (iptables extensions,
# ipset types, IPVS schedulers); point it at the same tree.
command -v modprobe > /dev/null || fail "modprobe not found (install the package kmod)"
echo "$box/modprobe" > /proc/sys/kernel/modprobe
required={q(" ".join(REQUIRED_MODULES))}
optional=
for m in {" ".join(OPTIONAL_MODULES)}; do
    modprobe -d "$scratch" -n "$m" > /dev/null 2>&1 && optional="$optional $m"
done
# One modprobe for all is fast; on failure, retry one by one to name the culprits.
if ! modprobe -d "$scratch" -a $required $optional 2> "$scratch/modprobe.log"; then
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


def _boot(
    cmdline: list[str],
    *,
    host_env: Mapping[str, str],
    box: Path,
    timeout: float,
    on_output: Callable[[str], None] | None,
    interactive: bool = False,
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
                f"user-mode-linux guest did not finish within {timeout:g} s; "
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
            f"user-mode-linux guest stopped before the payload finished (linux.uml exit "
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
