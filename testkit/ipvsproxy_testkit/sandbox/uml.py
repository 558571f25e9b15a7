"""Run a command inside a user-mode-linux guest: a real Linux kernel with IPVS.

The development and CI machines run a kernel without IPVS, the dummy link driver or
module loading. Debian's ``user-mode-linux`` package ships a Linux kernel that runs as an
ordinary process and has all of them as modules. The guest boots on the host's own root
filesystem (hostfs), so it runs the host's binaries and virtualenv unchanged; it has no
network device, so its traffic never leaves it. What every guest shares (init script,
modules, reading results back) is in ``guest.py``.

This kernel has no nf_tables IPv4 nat, so it is an iptables-legacy node; ``qemu.py`` boots
a second kernel for the nft backend.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ipvsproxy.errors import SandboxError
from ipvsproxy_testkit.sandbox.guest import (
    OPTIONAL_MODULES,
    REQUIRED_MODULES,
    GuestResult,
    boot,
    init_script,
    payload_box,
    shared_tempdir,
)

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
KERNEL_NAME = "user-mode-linux"


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
    """``RunInGuest`` (see guest.py) in user-mode-linux.

    ``interactive``: the payload's terminal is this process's (the guest console on our
    stdin and stdout, the host terminal put in raw mode meanwhile, so that the guest's
    own terminal handles echo, line editing and Ctrl-C); its output is not captured.
    """
    kernel = uml_kernel()
    # UML backs guest memory with a file in $TMPDIR. It unlinks that file at once; a private
    # directory, removed afterwards, makes sure nothing can outlive the run even so.
    memdir = Path(tempfile.mkdtemp(prefix="ipvsproxy-uml-mem-"))
    try:
        with payload_box(
            "ipvsproxy-uml-", argv_or_script, env=env, venv=venv, cwd=cwd, refuse_nf_tables=True
        ) as payload:
            init = payload.write_init(
                _init_script(
                    box=payload.box,
                    argv=payload.argv,
                    env=payload.env,
                    cwd=payload.cwd,
                    interactive=interactive,
                )
            )
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
                f"uml_dir={payload.box / 'uml'}",
            ]
            host_env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(payload.box),
                "TMPDIR": str(memdir),
                "LD_PRELOAD": str(_build_xstate_shim(payload.box)),
            }
            return boot(
                cmdline,
                host_env=host_env,
                box=payload.box,
                timeout=timeout,
                on_output=on_output,
                kernel_name=KERNEL_NAME,
                interactive=interactive,
            )
    finally:
        shutil.rmtree(memdir, ignore_errors=True)


def _init_script(
    *, box: Path, argv: Sequence[str], env: Mapping[str, str], cwd: str, interactive: bool = False
) -> str:
    return init_script(
        box=box,
        argv=argv,
        env=env,
        cwd=cwd,
        modules=str(UML_MODULES),
        required=REQUIRED_MODULES,
        optional=OPTIONAL_MODULES,
        halt="halt -f || poweroff -f || echo o > /proc/sysrq-trigger",
        kernel_name=KERNEL_NAME,
        interactive=interactive,
    )


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
