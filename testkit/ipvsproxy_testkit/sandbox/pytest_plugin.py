"""pytest plugin: kernel tests run inside one guest per kernel per session.

Tests marked ``kernel`` run in the user-mode-linux guest (iptables' legacy backend); tests
marked ``kernel_qemu`` in Debian's generic kernel under qemu (``qemu.py``; iptables' nft
backend too), which is several times slower: keep those few.

On the host, every collected kernel test is swapped for a stand-in item with the same node
id. When the first stand-in of a kernel runs, that kernel's guest boots and runs ``pytest``
on all of that kernel's tests (the host's collection, ``-k``, ``-m`` and node ids already
decided which); the guest session appends one JSON line per test to a file on the shared
filesystem. Each stand-in then replays the guest's
setup, call and teardown reports (serialised the way pytest-xdist ships them), so failures
show the guest's traceback, skips its reason, and ``--durations`` its timings. A guest that
cannot boot, or dies, fails every kernel test it did not report, with the reason: kernel
tests never pass or skip silently.

In a guest (``IPVSPROXY_IN_GUEST=1``) only the selected kernel tests run, each inside a
fresh network namespace (see the ``kernel_netns`` fixture), so they start from a clean
IPVS table, ipset list, iptables and link set, and cannot disturb each other.

Fixtures: ``kernel_netns`` (autouse; the namespace name, or None outside kernel tests or
with ``@pytest.mark.kernel(netns=False)``), ``pod_network`` (a ``PodNetwork``, closed after
the test), ``guest_kernel`` ("uml" or "qemu" in a guest, else None). Environment:
``IPVSPROXY_SANDBOX_TIMEOUT`` (seconds for each guest run, default 1200),
``IPVSPROXY_SANDBOX_MEM`` (guest memory, default 1G).

Keep this module light: the guest pays about a second per Python start, and several more for
heavy imports (the kubernetes client takes ~7 s there), so import nothing big here.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ipvsproxy.errors import SandboxError
from ipvsproxy_testkit.sandbox.guest import GuestResult, RunInGuest, shared_tempdir
from ipvsproxy_testkit.sandbox.netns import enter_netns
from ipvsproxy_testkit.sandbox.pods import PodNetwork
from ipvsproxy_testkit.sandbox.qemu import run_in_qemu
from ipvsproxy_testkit.sandbox.uml import run_in_guest

__all__ = ["IN_GUEST_ENV", "KernelTestItem", "run_in_guest", "run_in_qemu"]

IN_GUEST_ENV = "IPVSPROXY_IN_GUEST"
KERNEL_ENV = "IPVSPROXY_GUEST_KERNEL"
RESULTS_ENV = "IPVSPROXY_GUEST_RESULTS"
SELECTION_ENV = "IPVSPROXY_GUEST_SELECTION"
TIMEOUT_ENV = "IPVSPROXY_SANDBOX_TIMEOUT"
MEM_ENV = "IPVSPROXY_SANDBOX_MEM"
DEFAULT_TIMEOUT = 1200.0
MARKER = "kernel"
QEMU_MARKER = "kernel_qemu"
# Marker -> guest kernel, and how the summary names it.
FLAVOURS = {MARKER: "uml", QEMU_MARKER: "qemu"}
_KERNEL_NAMES = {"uml": "user-mode-linux", "qemu": "qemu"}

_OUTPUT_TAIL = 6000
_netns_names = itertools.count()


def in_guest() -> bool:
    return os.environ.get(IN_GUEST_ENV) == "1"


def flavour_of(item: pytest.Item) -> str | None:
    """Which guest kernel runs ``item``: "uml", "qemu", or None (the host)."""
    if item.get_closest_marker(QEMU_MARKER) is not None:
        return "qemu"
    if item.get_closest_marker(MARKER) is not None:
        return "uml"
    return None


def pytest_configure(config: pytest.Config) -> None:
    declared = {line.split(":", 1)[0].split("(", 1)[0].strip() for line in config.getini("markers")}
    for marker, where in (
        (MARKER, "the user-mode-linux sandbox kernel"),
        (QEMU_MARKER, "Debian's generic kernel under qemu (iptables-nft)"),
    ):
        if marker not in declared:
            config.addinivalue_line(
                "markers",
                f"{marker}(netns=True): runs inside {where}, by default in a fresh network "
                "namespace",
            )
    if in_guest():
        config.pluginmanager.register(_GuestSession(config), "ipvsproxy-sandbox-guest")
    else:
        config.pluginmanager.register(_HostSession(config), "ipvsproxy-sandbox-host")


@pytest.fixture(autouse=True)
def kernel_netns(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """In the guest, run each kernel test in a new network namespace; yields its name."""
    flavour = flavour_of(request.node)
    marker = None
    if flavour is not None:
        marker = request.node.get_closest_marker(QEMU_MARKER if flavour == "qemu" else MARKER)
    if not in_guest() or marker is None or not marker.kwargs.get("netns", True):
        yield None
        return
    with enter_netns(f"kt{os.getpid()}-{next(_netns_names)}") as name:
        yield name


@pytest.fixture
def guest_kernel() -> str | None:
    """The guest kernel the test runs in ("uml" or "qemu"), or None on the host."""
    return os.environ.get(KERNEL_ENV) if in_guest() else None


@pytest.fixture
def pod_network(kernel_netns: str | None) -> Iterator[PodNetwork]:
    """Pods around the test's namespace (the node); removed after the test."""
    with PodNetwork() as network:
        yield network


# --- inside the guest ------------------------------------------------------------------


class _GuestSession:
    """Runs the host's selection and writes one JSON line per finished test."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self._phases: dict[str, dict[str, dict[str, Any]]] = {}
        path = os.environ.get(RESULTS_ENV)
        self._out = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115
        selection = os.environ.get(SELECTION_ENV)
        self._selection: set[str] | None = None
        if selection:
            self._selection = set(Path(selection).read_text().splitlines())

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        keep: list[pytest.Item] = []
        drop: list[pytest.Item] = []
        for item in items:
            if self._selection is not None:
                wanted = item.nodeid in self._selection
            else:
                wanted = flavour_of(item) == os.environ.get(KERNEL_ENV, "uml")
            (keep if wanted else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self._write({"collect_error": report.nodeid, "text": report.longreprtext})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # pytest's own report serialisation (the one pytest-xdist ships reports with)
        # keeps the structured traceback, so the host renders it as if run locally.
        data = self._config.hook.pytest_report_to_serializable(config=self._config, report=report)
        self._phases.setdefault(report.nodeid, {})[report.when] = data
        if report.when == "teardown":
            self._write({"nodeid": report.nodeid, "phases": self._phases.pop(report.nodeid)})

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def _write(self, record: dict[str, Any]) -> None:
        if self._out is not None:
            # One line per test, flushed at once: hostfs writes through to the host, so the
            # host keeps every finished test even if the guest dies later.
            self._out.write(json.dumps(record) + "\n")
            self._out.flush()


# --- on the host ------------------------------------------------------------------------


class KernelTestUnavailable(Exception):
    """The guest produced no result for a kernel test (it did not boot, or died)."""


class KernelTestItem(pytest.Item):
    """Host-side stand-in for a kernel test: replays the guest's reports for that node id."""

    def __init__(
        self, *, guest: _GuestRun, location: tuple[str, int | None, str], **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.guest = guest
        self._location = location

    def reportinfo(self) -> tuple[str, int | None, str]:
        return self._location

    def runtest(self) -> None:
        self.guest.check(self.nodeid)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        if isinstance(excinfo.value, KernelTestUnavailable):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)


class _HostSession:
    """Swaps kernel tests for stand-ins; each kernel's guest runs its tests on first use."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        # One run per kernel, each booted when its first test runs.
        self._guests: dict[str, _GuestRun] = {}

    # Last, so that -k, -m and other plugins have already deselected what they will.
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        for index, item in enumerate(items):
            flavour = flavour_of(item)
            if flavour is None or isinstance(item, KernelTestItem):
                continue
            guest = self._guests.get(flavour)
            if guest is None:
                guest = self._guests[flavour] = _GuestRun(self._config, flavour)
            path, lineno, name = item.reportinfo()
            assert item.parent is not None  # collected items always have one
            stand_in = KernelTestItem.from_parent(
                item.parent,
                name=item.name,
                nodeid=item.nodeid,
                guest=guest,
                location=(str(path), lineno, name),
            )
            stand_in.keywords.update(item.keywords)
            items[index] = stand_in
            guest.nodeids.append(item.nodeid)

    # Outermost wrapper, so the guest's verdict replaces whatever the host-side
    # plugins (skip and xfail marks) made of the stand-in.
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        if isinstance(item, KernelTestItem):
            item.guest.run()
        report = yield
        if isinstance(item, KernelTestItem):
            data = item.guest.results.get(item.nodeid, {}).get(call.when)
            if data is not None:
                # JSON turned the tuples of skip reasons and locations into lists.
                for key in ("longrepr", "location"):
                    if isinstance(data.get(key), list):
                        data[key] = tuple(data[key])
                guest_report: pytest.TestReport = self._config.hook.pytest_report_from_serializable(
                    config=self._config, data=data
                )
                return guest_report
        return report

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        ran = [self._guests[f] for f in _KERNEL_NAMES if f in self._guests and self._guests[f].ran]
        if not ran:
            return
        tr = terminalreporter
        parts = [guest.summary() for guest in ran if guest.result is not None]
        if parts:
            tr.write_line(f"kernel tests: {'; '.join(parts)}")
        for guest in ran:
            if guest.failure is not None:
                reason = guest.failure.splitlines()[0]
                tr.write_line(
                    f"kernel tests: FAILED to run in the {guest.kernel_name} guest: {reason}",
                    red=True,
                )


class _GuestRun:
    """The tests of one guest kernel, run in one boot, and what that boot reported."""

    def __init__(self, config: pytest.Config, flavour: str) -> None:
        self._config = config
        self.flavour = flavour
        self.kernel_name = _KERNEL_NAMES[flavour]
        self.nodeids: list[str] = []
        self.ran = False
        self.results: dict[str, dict[str, dict[str, Any]]] = {}
        self.failure: str | None = None
        self.result: GuestResult | None = None
        self._collect_errors: list[str] = []
        self._explained = False

    def summary(self) -> str:
        assert self.result is not None
        guest = self.result
        return (
            f"{len(self.results)} ran inside the {self.kernel_name} guest, kernel "
            f"{guest.kernel_release} (boot {guest.boot_seconds:.1f} s, guest total "
            f"{guest.elapsed_seconds:.1f} s)"
        )

    def check(self, nodeid: str) -> None:
        """Raise KernelTestUnavailable unless the guest reported on ``nodeid``."""
        self.run()
        if nodeid in self.results:
            return
        raise KernelTestUnavailable(self._missing(nodeid))

    def run(self) -> None:
        if self.ran:
            return
        self.ran = True
        # Looked up at call time, so tests can stand in for the guests.
        runner: RunInGuest = run_in_qemu if self.flavour == "qemu" else run_in_guest
        box = shared_tempdir("ipvsproxy-kernel-tests-")
        try:
            results = box / "results.jsonl"
            selection = box / "selection"
            selection.write_text("\n".join(self.nodeids) + "\n")
            try:
                self.result = runner(
                    self._guest_argv(),
                    timeout=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT)),
                    mem=os.environ.get(MEM_ENV, "1G"),
                    env=self._guest_env(results=results, selection=selection),
                    cwd=str(self._config.rootpath),
                    on_output=self._stream() if self._streaming else None,
                )
            except SandboxError as exc:
                self.failure = str(exc)
            self._read(results)
        finally:
            shutil.rmtree(box, ignore_errors=True)
        if self.result is not None and self.result.exit_status not in (0, 1):
            self.failure = (
                f"pytest in the guest exited with status {self.result.exit_status}; "
                f"its output ends with:\n{_tail(self.result.output)}"
            )

    @property
    def _streaming(self) -> bool:
        return bool(self._config.option.capture == "no")

    def _stream(self) -> Any:
        tw = self._config.get_terminal_writer()

        def write(text: str) -> None:
            tw.write(text, flush=True)

        return write

    def _guest_argv(self) -> list[str]:
        option = self._config.option
        files = sorted({nodeid.split("::", 1)[0] for nodeid in self.nodeids})
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
        argv += ["--rootdir", str(self._config.rootpath)]
        if self._config.inipath is not None:
            argv += ["-c", str(self._config.inipath)]
        argv += [f"--tb={option.tbstyle}"]
        if option.showlocals:
            argv.append("--showlocals")
        if option.maxfail:
            argv.append(f"--maxfail={option.maxfail}")
        if self._streaming:
            argv.append("-s")
        return [*argv, *files]

    def _guest_env(self, *, results: Path, selection: Path) -> dict[str, str]:
        env = {
            IN_GUEST_ENV: "1",
            KERNEL_ENV: self.flavour,
            RESULTS_ENV: str(results),
            SELECTION_ENV: str(selection),
            # The host has compiled what it imported; the guest must not add files.
            "PYTHONDONTWRITEBYTECODE": "1",
            # Tracebacks are formatted in the guest: make them as wide as this terminal.
            "COLUMNS": str(self._config.get_terminal_writer().fullwidth),
        }
        for name, value in os.environ.items():
            if name == "PYTHONPATH" or (name.startswith("IPVSPROXY_") and name not in env):
                env[name] = value
        return env

    def _read(self, results: Path) -> None:
        if not results.exists():
            return
        for line in results.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a dying guest
            if "collect_error" in record:
                self._collect_errors.append(f"{record['collect_error']}:\n{record['text']}")
            else:
                self.results[record["nodeid"]] = record["phases"]

    def _missing(self, nodeid: str) -> str:
        lines = [f"kernel test {nodeid} has no result from the {self.kernel_name} guest."]
        if self.failure is not None:
            if self._explained:
                # Full details once; a guest that died takes many tests with it.
                first_line = self.failure.splitlines()[0]
                lines.append(f"The guest run failed: {first_line} (details above)")
                return "\n".join(lines)
            self._explained = True
            lines.append(f"The guest run failed: {self.failure}")
        elif self.result is not None:
            lines.append(
                f"pytest in the guest exited with status {self.result.exit_status}"
                " without reporting this test."
            )
        prefix = nodeid.split("::", 1)[0]
        for error in self._collect_errors:
            if error.startswith(prefix):
                lines.append(f"Collection error in the guest: {error}")
        if self.result is not None:
            lines.append(f"Guest pytest output (tail):\n{_tail(self.result.output)}")
            lines.append(f"Guest console (tail):\n{_tail(self.result.console, 3000)}")
        return "\n".join(lines)


def _tail(text: str, limit: int = _OUTPUT_TAIL) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]
