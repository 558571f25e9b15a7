"""pytest plugin: tests marked ``kernel`` run inside one user-mode-linux guest per session.

On the host, every collected kernel test is swapped for a stand-in item with the same node
id. When the first stand-in runs, one guest boots and runs ``pytest`` on all of them (the
host's collection, ``-k``, ``-m`` and node ids already decided which); the guest session
appends one JSON line per test to a file on hostfs. Each stand-in then replays the guest's
setup, call and teardown reports (serialised the way pytest-xdist ships them), so failures
show the guest's traceback, skips its reason, and ``--durations`` its timings. A guest that
cannot boot, or dies, fails every kernel test it did not report, with the reason: kernel
tests never pass or skip silently.

In the guest (``IPVSPROXY_IN_GUEST=1``) only the selected kernel tests run, each inside a
fresh network namespace (see the ``kernel_netns`` fixture), so they start from a clean
IPVS table, ipset list, iptables and link set, and cannot disturb each other.

Fixtures: ``kernel_netns`` (autouse; the namespace name, or None outside kernel tests or
with ``@pytest.mark.kernel(netns=False)``), ``pod_network`` (a ``PodNetwork``, closed after
the test). Environment: ``IPVSPROXY_SANDBOX_TIMEOUT`` (seconds for the whole guest run,
default 1200), ``IPVSPROXY_SANDBOX_MEM`` (guest memory, default 1G).

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
from ipvsproxy.sandbox.netns import enter_netns
from ipvsproxy.sandbox.pods import PodNetwork
from ipvsproxy.sandbox.uml import GuestResult, run_in_guest, shared_tempdir

__all__ = ["IN_GUEST_ENV", "KernelTestItem"]

IN_GUEST_ENV = "IPVSPROXY_IN_GUEST"
RESULTS_ENV = "IPVSPROXY_GUEST_RESULTS"
SELECTION_ENV = "IPVSPROXY_GUEST_SELECTION"
TIMEOUT_ENV = "IPVSPROXY_SANDBOX_TIMEOUT"
MEM_ENV = "IPVSPROXY_SANDBOX_MEM"
DEFAULT_TIMEOUT = 1200.0
MARKER = "kernel"

_OUTPUT_TAIL = 6000
_netns_names = itertools.count()


def in_guest() -> bool:
    return os.environ.get(IN_GUEST_ENV) == "1"


def pytest_configure(config: pytest.Config) -> None:
    declared = (line.split(":", 1)[0].split("(", 1)[0].strip() for line in config.getini("markers"))
    if MARKER not in declared:
        config.addinivalue_line(
            "markers",
            f"{MARKER}(netns=True): runs inside the user-mode-linux sandbox kernel, by default "
            "in a fresh network namespace",
        )
    if in_guest():
        config.pluginmanager.register(_GuestSession(config), "ipvsproxy-sandbox-guest")
    else:
        config.pluginmanager.register(_HostSession(config), "ipvsproxy-sandbox-host")


@pytest.fixture(autouse=True)
def kernel_netns(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """In the guest, run each kernel test in a new network namespace; yields its name."""
    marker = request.node.get_closest_marker(MARKER)
    if not in_guest() or marker is None or not marker.kwargs.get("netns", True):
        yield None
        return
    with enter_netns(f"kt{os.getpid()}-{next(_netns_names)}") as name:
        yield name


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
                wanted = item.get_closest_marker(MARKER) is not None
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
        self, *, host: _HostSession, location: tuple[str, int | None, str], **kw: Any
    ) -> None:
        super().__init__(**kw)
        self._host = host
        self._location = location

    def reportinfo(self) -> tuple[str, int | None, str]:
        return self._location

    def runtest(self) -> None:
        self._host.check(self.nodeid)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        if isinstance(excinfo.value, KernelTestUnavailable):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)


class _HostSession:
    """Swaps kernel tests for stand-ins and runs them all in one guest on first use."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self._nodeids: list[str] = []
        self._ran = False
        self._results: dict[str, dict[str, dict[str, Any]]] = {}
        self._collect_errors: list[str] = []
        self._failure: str | None = None
        self._explained = False
        self._guest: GuestResult | None = None

    # Last, so that -k, -m and other plugins have already deselected what they will.
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        for index, item in enumerate(items):
            if item.get_closest_marker(MARKER) is None or isinstance(item, KernelTestItem):
                continue
            path, lineno, name = item.reportinfo()
            assert item.parent is not None  # collected items always have one
            stand_in = KernelTestItem.from_parent(
                item.parent,
                name=item.name,
                nodeid=item.nodeid,
                host=self,
                location=(str(path), lineno, name),
            )
            stand_in.keywords.update(item.keywords)
            items[index] = stand_in
            self._nodeids.append(item.nodeid)

    # Outermost wrapper, so the guest's verdict replaces whatever the host-side
    # plugins (skip and xfail marks) made of the stand-in.
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        if isinstance(item, KernelTestItem):
            self.run_guest()
        report = yield
        if isinstance(item, KernelTestItem):
            data = self._results.get(item.nodeid, {}).get(call.when)
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
        if not self._ran:
            return
        tr = terminalreporter
        if self._guest is not None:
            guest = self._guest
            tr.write_line(
                f"kernel tests: {len(self._results)} ran inside user-mode-linux guest, "
                f"kernel {guest.kernel_release} (boot {guest.boot_seconds:.1f} s, "
                f"guest total {guest.elapsed_seconds:.1f} s)"
            )
        if self._failure is not None:
            reason = self._failure.splitlines()[0]
            tr.write_line(f"kernel tests: FAILED to run in the guest: {reason}", red=True)

    def check(self, nodeid: str) -> None:
        """Raise KernelTestUnavailable unless the guest reported on ``nodeid``."""
        self.run_guest()
        if nodeid in self._results:
            return
        raise KernelTestUnavailable(self._missing(nodeid))

    def run_guest(self) -> None:
        if self._ran:
            return
        self._ran = True
        box = shared_tempdir("ipvsproxy-kernel-tests-")
        try:
            results = box / "results.jsonl"
            selection = box / "selection"
            selection.write_text("\n".join(self._nodeids) + "\n")
            try:
                self._guest = run_in_guest(
                    self._guest_argv(),
                    timeout=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT)),
                    mem=os.environ.get(MEM_ENV, "1G"),
                    env=self._guest_env(results=results, selection=selection),
                    cwd=str(self._config.rootpath),
                    on_output=self._stream() if self._streaming else None,
                )
            except SandboxError as exc:
                self._failure = str(exc)
            self._read(results)
        finally:
            shutil.rmtree(box, ignore_errors=True)
        if self._guest is not None and self._guest.exit_status not in (0, 1):
            self._failure = (
                f"pytest in the guest exited with status {self._guest.exit_status}; "
                f"its output ends with:\n{_tail(self._guest.output)}"
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
        files = sorted({nodeid.split("::", 1)[0] for nodeid in self._nodeids})
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
                self._results[record["nodeid"]] = record["phases"]

    def _missing(self, nodeid: str) -> str:
        lines = [f"kernel test {nodeid} has no result from the user-mode-linux guest."]
        if self._failure is not None:
            if self._explained:
                # Full details once; a guest that died takes many tests with it.
                first_line = self._failure.splitlines()[0]
                lines.append(f"The guest run failed: {first_line} (details above)")
                return "\n".join(lines)
            self._explained = True
            lines.append(f"The guest run failed: {self._failure}")
        elif self._guest is not None:
            lines.append(
                f"pytest in the guest exited with status {self._guest.exit_status}"
                " without reporting this test."
            )
        prefix = nodeid.split("::", 1)[0]
        for error in self._collect_errors:
            if error.startswith(prefix):
                lines.append(f"Collection error in the guest: {error}")
        if self._guest is not None:
            lines.append(f"Guest pytest output (tail):\n{_tail(self._guest.output)}")
            lines.append(f"Guest console (tail):\n{_tail(self._guest.console, 3000)}")
        return "\n".join(lines)


def _tail(text: str, limit: int = _OUTPUT_TAIL) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]
