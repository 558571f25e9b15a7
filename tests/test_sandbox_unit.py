"""The sandbox's host-side logic, without booting a guest.

The pytest plugin is exercised end to end with a stand-in for ``run_in_guest`` that runs the
"guest" pytest session as a host subprocess: what the host reports must be what that session
reported, and a guest that fails must fail every kernel test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from ipvsproxy_testkit.sandbox import pytest_plugin, uml
from ipvsproxy_testkit.sandbox.uml import GuestResult

from ipvsproxy.errors import SandboxError

CONFTEST = 'pytest_plugins = ["ipvsproxy_testkit.sandbox.pytest_plugin"]\n'

OUTCOMES = """
import os
import pytest

# The fake guest is the host: keep the kernel tests out of real namespaces.
pytestmark = pytest.mark.kernel(netns=False)


def test_passes(kernel_netns):
    assert os.environ["IPVSPROXY_IN_GUEST"] == "1"
    assert kernel_netns is None


def test_fails():
    print("said in the guest")
    assert 6 * 7 == 41, "guest arithmetic"


def test_skips():
    pytest.skip("guest says skip")


@pytest.mark.xfail(reason="known guest bug")
def test_xfails():
    assert False


@pytest.fixture
def broken():
    raise RuntimeError("fixture broke in the guest")


def test_setup_error(broken):
    pass
"""

UNIT = """
import os


def test_on_host():
    assert os.environ.get("IPVSPROXY_IN_GUEST") is None
"""


def fake_guest(*, drop: Sequence[str] = (), calls: list[list[str]] | None = None) -> object:
    """A run_in_guest that runs the payload on the host; ``drop`` filters result lines."""

    def run(
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        **_: object,
    ) -> GuestResult:
        assert env is not None
        if calls is not None:
            calls.append(list(argv))
            calls.append(Path(env["IPVSPROXY_GUEST_SELECTION"]).read_text().split())
        proc = subprocess.run(
            argv,
            env={**os.environ, **env},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        results = Path(env["IPVSPROXY_GUEST_RESULTS"])
        if drop and results.exists():
            kept = [
                line
                for line in results.read_text().splitlines()
                if not any(d in line for d in drop)
            ]
            results.write_text("".join(line + "\n" for line in kept))
        return GuestResult(
            exit_status=proc.returncode,
            output=proc.stdout + proc.stderr,
            kernel_release="9.9.9-fake",
            console="console text",
            boot_seconds=0.0,
            elapsed_seconds=0.1,
        )

    return run


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_outcomes=OUTCOMES, test_unit=UNIT)
    return pytester


def test_guest_outcomes_are_replayed_on_the_host(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pytest_plugin, "run_in_guest", fake_guest())
    result = project.runpytest("-rA")
    result.assert_outcomes(passed=2, failed=1, skipped=1, xfailed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*RuntimeError: fixture broke in the guest*",
            "*AssertionError: guest arithmetic*",
            "*said in the guest*",
            "kernel tests: 5 ran inside the user-mode-linux guest, kernel 9.9.9-fake*",
            "SKIPPED *guest says skip*",
            "XFAIL *test_xfails*known guest bug*",
        ]
    )


def test_only_the_selected_kernel_tests_go_to_the_guest(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(pytest_plugin, "run_in_guest", fake_guest(calls=calls))
    result = project.runpytest("-k", "passes or on_host")
    result.assert_outcomes(passed=2)
    argv, selection = calls
    assert selection == ["test_outcomes.py::test_passes"]
    assert argv[-1] == "test_outcomes.py"


def test_no_kernel_tests_no_guest(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(pytest_plugin, "run_in_guest", fake_guest(calls=calls))
    project.runpytest("test_unit.py").assert_outcomes(passed=1)
    assert calls == []


def test_a_guest_that_cannot_boot_fails_every_kernel_test(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> GuestResult:
        raise SandboxError("linux.uml not found: apt-get install user-mode-linux")

    monkeypatch.setattr(pytest_plugin, "run_in_guest", broken)
    result = project.runpytest()
    result.assert_outcomes(passed=1, failed=5)
    result.stdout.fnmatch_lines(
        [
            "*The guest run failed: linux.uml not found: apt-get install user-mode-linux",
            "kernel tests: FAILED to run in the user-mode-linux guest: linux.uml not found*",
        ]
    )


def test_a_test_the_guest_did_not_report_fails(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pytest_plugin, "run_in_guest", fake_guest(drop=["test_passes"]))
    result = project.runpytest("-k", "passes")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_passes has no result from the user-mode-linux guest*"])


def test_missing_kernel_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(uml.KERNEL_ENV, raising=False)
    monkeypatch.setattr("shutil.which", lambda *a, **k: None)
    with pytest.raises(SandboxError, match="apt-get install user-mode-linux"):
        uml.run_in_guest(["true"], timeout=1)


def test_init_script_loads_modules_and_keeps_the_host_clean(tmp_path: Path) -> None:
    script = uml._init_script(
        box=tmp_path, argv=["python", "-c", "print('a b')"], env={"A": "x y"}, cwd="/srv/a dir"
    )
    # tmpfs on /run comes before anything that could write there (ip netns).
    assert script.index("mount -t tmpfs -o mode=0755 tmpfs /run") < script.index("mount -t proc")
    assert "uname -r" in script and "6.1.176" not in script
    wanted = script.split("\nrequired=\nfor m in ")[1].split("; do")[0].split()
    for module in ("ip_vs", "ip_vs_rr", "dummy", "veth", "xt_set", "iptable_nat"):
        assert module in wanted
    assert "nf_tables" not in wanted  # user-mode-linux has no nf_tables IPv4 nat
    assert "env -i 'A=x y' python -c 'print('\"'\"'a b'\"'\"')'" in script
    assert "cd '/srv/a dir'" in script


def test_shared_tempdir_avoids_what_the_guest_mounts_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tempfile.gettempdir", lambda: "/dev/shm")
    made = uml.shared_tempdir("ipvsproxy-unit-")
    made.rmdir()
    assert made.parent == Path("/tmp")


def test_xstate_shim_compiles_and_interposes_ptrace(tmp_path: Path) -> None:
    library = uml._build_xstate_shim(tmp_path)
    symbols = subprocess.run(
        ["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    assert any(line.split()[-1] == "ptrace" for line in symbols.splitlines())


def test_interactive_init_script_gives_the_payload_the_console(tmp_path: Path) -> None:
    kwargs = {"box": tmp_path, "argv": ["/bin/bash", "-i"], "env": {"A": "1"}, "cwd": "/"}
    interactive = uml._init_script(**kwargs, interactive=True)  # type: ignore[arg-type]
    batch = uml._init_script(**kwargs)  # type: ignore[arg-type]
    assert "setsid -c -w env -i A=1 /bin/bash -i < /dev/console > /dev/console 2>&1" in interactive
    assert '"$box/output"' not in interactive
    assert 'env -i A=1 /bin/bash -i > "$box/output" 2>&1 < /dev/null' in batch


QEMU_TESTS = """
import os
import pytest

pytestmark = pytest.mark.kernel_qemu(netns=False)


def test_in_qemu(guest_kernel):
    assert guest_kernel == "qemu"


def test_also_in_qemu():
    assert os.environ["IPVSPROXY_GUEST_KERNEL"] == "qemu"
"""


def fake_qemu_guest(calls: list[list[str]]) -> object:
    inner = fake_guest(calls=calls)

    def run(argv: Sequence[str], **kwargs: object) -> GuestResult:
        result = inner(argv, **kwargs)  # type: ignore[operator]
        assert isinstance(result, GuestResult)
        return GuestResult(
            exit_status=result.exit_status,
            output=result.output,
            kernel_release="6.1.0-99-amd64",
            console="",
            boot_seconds=1.0,
            elapsed_seconds=2.0,
        )

    return run


def test_each_kernel_runs_its_own_tests_in_one_guest(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(test_nft=QEMU_TESTS)
    uml_calls: list[list[str]] = []
    qemu_calls: list[list[str]] = []
    monkeypatch.setattr(pytest_plugin, "run_in_guest", fake_guest(calls=uml_calls))
    monkeypatch.setattr(pytest_plugin, "run_in_qemu", fake_qemu_guest(qemu_calls))
    result = project.runpytest("-k", "passes or qemu or on_host")
    result.assert_outcomes(passed=4)
    (_, uml_selection), (_, qemu_selection) = (uml_calls, qemu_calls)  # one boot each
    assert uml_selection == ["test_outcomes.py::test_passes"]
    assert qemu_selection == ["test_nft.py::test_in_qemu", "test_nft.py::test_also_in_qemu"]
    result.stdout.fnmatch_lines(
        [
            "kernel tests: 1 ran inside the user-mode-linux guest, kernel 9.9.9-fake (*);"
            " 2 ran inside the qemu guest, kernel 6.1.0-99-amd64 (boot 1.0 s, guest total 2.0 s)"
        ]
    )


def test_a_qemu_guest_that_cannot_boot_fails_only_its_tests(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> GuestResult:
        raise SandboxError("qemu-system-x86_64 not found: apt-get install qemu-system-x86")

    project.makepyfile(test_nft=QEMU_TESTS)
    monkeypatch.setattr(pytest_plugin, "run_in_guest", fake_guest())
    monkeypatch.setattr(pytest_plugin, "run_in_qemu", broken)
    result = project.runpytest("-k", "passes or qemu")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        ["kernel tests: FAILED to run in the qemu guest: qemu-system-x86_64 not found*"]
    )
