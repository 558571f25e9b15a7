"""Command line: the composition root, and the only place that exits.

Exit status: 0 success, 1 the kernel refused something (or cannot be reached), 2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from loguru import logger

from ipvsproxy.agent.cleanup import cleanup
from ipvsproxy.agent.full_sync import full_sync, observe
from ipvsproxy.agent.scheduler_probe import ServiceSchedulers, probe_scheduler
from ipvsproxy.config.flags import add_kube_proxy_flags, effective_config, given_flags
from ipvsproxy.config.kubeproxy_file import (
    config_document,
    configz_document,
    load_config,
    load_document,
)
from ipvsproxy.config.settings import RULES_BACKENDS, ProxyConfig
from ipvsproxy.core.desired import (
    NodeInfo,
    desired_state,
    settings_for_node,
    with_node_object,
)
from ipvsproxy.core.model import (
    DUMMY_INTERFACE,
    IPAddress,
    IPFamily,
    KernelState,
    Node,
    RulesBackend,
)
from ipvsproxy.core.ownership import owned
from ipvsproxy.core.render import SECTIONS, render
from ipvsproxy.dataplane.interfaces import ConntrackDataplane, Dataplanes
from ipvsproxy.errors import ApiError, ConfigError, InputError, IpvsProxyError, KernelError
from ipvsproxy.k8s.files import Cluster, read_cluster
from ipvsproxy.logs import FORMATS as LOG_FORMATS
from ipvsproxy.logs import add_logging_arguments, logging_from_arguments
from ipvsproxy.version import version_text

if TYPE_CHECKING:
    from ipvsproxy.dataplane.rules_backend import RulesChoice
    from ipvsproxy.dataplane.sysctl import SysctlFailure

EXIT_OK, EXIT_KERNEL, EXIT_INPUT = 0, 1, 2
EXIT_DRIFT = 1  # verify: the kernel differs from the desired state


class _VersionAction(argparse.Action):
    """Prints the version when used: the build identity is only looked up then."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        sys.stdout.write(version_text() + "\n")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipvsproxy",
        description="Kubernetes Services to Linux IPVS, like kube-proxy --proxy-mode=ipvs.",
    )
    add_logging_arguments(parser)
    parser.add_argument(
        "--version", action=_VersionAction, nargs=0, help="print the version and exit"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def objects_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "-f",
            "--filename",
            dest="files",
            action="append",
            required=True,
            metavar="FILE",
            help="Kubernetes objects as YAML or JSON (multi-document or kind: List); repeatable",
        )
        sub.add_argument("--config", help="kube-proxy's KubeProxyConfiguration YAML")
        sub.add_argument("--hostname-override", help="this node's name (endpoint locality)")
        sub.add_argument(
            "--node-ip",
            action="append",
            default=[],
            metavar="IP",
            help="this node's primary IPs (default: its Node object's, if in the files); "
            "repeatable",
        )
        sub.add_argument(
            "--local-address",
            action="append",
            default=None,
            metavar="IP",
            help="an address of this host's interfaces, serving NodePorts (default: read "
            "from the kernel); repeatable",
        )
        return sub

    def rules_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--rules-backend",
            choices=RULES_BACKENDS,
            default=None,
            help="what holds the sets and fixed rules (default: the --config file's "
            "ipvs.rulesBackend, else auto: iptables where iptables and ipset are "
            "installed, else nftables)",
        )

    def backend_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--iptables-backend",
            choices=("auto", "legacy", "nft"),
            default="auto",
            help="with the iptables rules backend, iptables' own: auto: the backend "
            "kubelet uses, else the one holding more rules",
        )
        if sub.prog.split()[-1] != "run":  # run takes it with kube-proxy's flags
            rules_option(sub)

    plan = objects_command("plan", "print the desired kernel state; touch nothing")
    plan.add_argument("--section", choices=SECTIONS)
    rules_option(plan)
    backend_option(objects_command("once", "program the kernel once and exit"))
    show = commands.add_parser("show", help="print what the kernel holds that the proxy owns")
    show.add_argument("--section", choices=SECTIONS)
    backend_option(show)
    backend_option(
        commands.add_parser(
            "cleanup", help="remove everything the proxy created (both rules backends')"
        )
    )
    run = commands.add_parser(
        "run",
        help="watch the API server and keep the kernel in step until SIGTERM",
        description="Takes kube-proxy's flags (IPVS mode) with kube-proxy's precedence: "
        "with --config the file wins over every flag but --hostname-override, --master and "
        "the logging flags.",
    )
    add_kube_proxy_flags(run)
    run.add_argument(
        "--node-ip", action="append", default=[], metavar="IP", help="this node's IPs; repeatable"
    )
    run.add_argument(
        "--dataplane",
        choices=("kernel", "fake"),
        default="kernel",
        help="fake: program an in-memory kernel instead of this host's (a hollow agent for "
        "control-plane scale tests; needs no privileges)",
    )
    backend_option(run)
    verify = commands.add_parser(
        "verify",
        help="compare the kernel with the API server (or -f files); exit 1 on drift",
        description="Exit 0 when the kernel holds what the Services and EndpointSlices ask "
        "for, 1 with the differences when it does not, 2 when that cannot be told (bad "
        "input, API server unreachable). Without -f, one list of each resource from the "
        "API server: --kubeconfig, --master, else the in-cluster service account.",
    )
    verify.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        default=[],
        metavar="FILE",
        help="Kubernetes objects as YAML or JSON instead of the API server; repeatable",
    )
    verify.add_argument("--kubeconfig", help="kubeconfig file of the API server")
    verify.add_argument("--master", help="API server URL (overrides the kubeconfig's server)")
    verify.add_argument("--config", help="kube-proxy's KubeProxyConfiguration YAML")
    verify.add_argument("--hostname-override", help="this node's name (default: the hostname)")
    verify.add_argument(
        "--node-ip", action="append", default=[], metavar="IP", help="this node's IPs; repeatable"
    )
    backend_option(verify)
    sysctls = commands.add_parser(
        "sysctls",
        help="set the sysctls IPVS mode needs (loads ip_vs); for a privileged init container",
    )
    sysctls.add_argument("--config", help="kube-proxy's KubeProxyConfiguration YAML")
    for sub in commands.choices.values():
        add_logging_arguments(sub, top_level=False)
    return parser


def _settings(args: argparse.Namespace) -> tuple[ProxyConfig, NodeInfo]:
    config = load_config(args.config) if args.config else ProxyConfig()
    if args.hostname_override:
        config = dataclasses.replace(config, hostname_override=args.hostname_override)
    return config, _node(config, args)


def _node(config: ProxyConfig, args: argparse.Namespace) -> NodeInfo:
    name = config.hostname_override or socket.gethostname()
    addresses = _ips("--node-ip", args.node_ip)
    if not addresses and config.bind_address is not None:
        # kube-proxy's bindAddress overrides its idea of the node's primary IP.
        addresses = (config.bind_address,)
    return NodeInfo(name=name.lower(), addresses=addresses)


def _ips(option: str, texts: Sequence[str]) -> tuple[IPAddress, ...]:
    addresses: list[IPAddress] = []
    for text in texts:
        try:
            addresses.append(ipaddress.ip_address(text))
        except ValueError as exc:
            raise InputError(f"{option} {text!r} is not an IP address") from exc
    return tuple(addresses)


def _with_node_object(node: NodeInfo, objects: Sequence[Node]) -> NodeInfo:
    """This node's topology zone and pod CIDRs from its Node object, if the files hold
    one; its addresses too unless --node-ip gave them."""
    for candidate in objects:
        if candidate.name == node.name:
            return with_node_object(node, candidate)
    return node


def _host_addresses() -> frozenset[IPAddress]:
    """The host's interface addresses except kube-ipvs0's (NodePorts are served there)."""
    from ipvsproxy.dataplane.links import LinkTool

    with LinkTool() as links:
        return links.node_addresses(DUMMY_INTERFACE)


def _desired(
    args: argparse.Namespace,
    local_addresses: frozenset[IPAddress] | None = None,
    *,
    dataplanes: Dataplanes | None = None,
    rules: RulesBackend = RulesBackend.IPTABLES,
) -> tuple[KernelState, ProxyConfig, Cluster]:
    """The desired state for the files; the host's addresses are --local-address, else
    local_addresses, else read from the kernel here. With dataplanes, a Service's own
    scheduler that the kernel lacks is replaced by the node's (ServiceSchedulers)."""
    config, node = _settings(args)
    cluster = read_cluster(args.files)
    if dataplanes is not None:
        schedulers = ServiceSchedulers(dataplanes.ipvs, config.scheduler)
        cluster = dataclasses.replace(
            cluster, services=tuple(schedulers.usable(service) for service in cluster.services)
        )
    node = _with_node_object(node, cluster.nodes)
    given = getattr(args, "local_address", None)
    if given is not None:
        local_addresses = frozenset(_ips("--local-address", given))
    elif local_addresses is None:
        local_addresses = _host_addresses()
    node = dataclasses.replace(node, local_addresses=local_addresses)
    if dataplanes is not None:
        rules = dataplanes.rules.backend
    settings = settings_for_node(config.desired_settings(), node)
    settings = dataclasses.replace(settings, rules_backend=rules)
    state = desired_state(cluster.services, cluster.slices, node=node, settings=settings)
    return state, config, cluster


def _wanted_rules(args: argparse.Namespace, config: ProxyConfig | None = None) -> str:
    """--rules-backend, else the configuration's ipvs.rulesBackend, else auto (`run`
    has it among kube-proxy's flags, already in its configuration)."""
    given = getattr(args, "rules_backend", None)
    if isinstance(given, str):
        return given
    return config.rules_backend if config is not None else "auto"


def _rules_choice(wanted: str) -> RulesChoice:
    from ipvsproxy.dataplane.rules_backend import choose_rules_backend

    return choose_rules_backend(wanted)


@contextmanager
def _dataplanes(
    backend: str, rules: RulesChoice, *, every_backend: bool = False
) -> Iterator[Dataplanes]:
    """The real adapters. ``backend``: iptables' own (legacy, nft, auto) for the iptables
    rules backend; ``every_backend`` (cleanup): remove chains from both iptables backends
    when ``backend`` is auto, not only from the one detected."""
    # Imported here so that `plan` needs no kernel support at all.
    from ipvsproxy.dataplane.ipvs import IpvsSocket
    from ipvsproxy.dataplane.links import LinkTool
    from ipvsproxy.dataplane.rules_backend import open_rules

    # IPVS first: without it nothing else is touched (backend detection may write a probe).
    with IpvsSocket() as ipvs, LinkTool() as links, ExitStack() as stack:
        yield Dataplanes(
            ipvs=ipvs,
            links=links,
            rules=open_rules(rules, iptables_backend=backend, every_backend=every_backend),
            conntrack=_conntrack(stack),
        )


def _conntrack(stack: ExitStack) -> ConntrackDataplane | None:
    """The conntrack table, for stale UDP flows; None (logged) when it cannot be opened:
    services work without it, UDP clients then wait for their flows to time out."""
    from ipvsproxy.dataplane.stale_udp_conntrack import ConntrackSocket

    try:
        return stack.enter_context(ConntrackSocket())
    except KernelError as exc:
        logger.warning("stale UDP conntrack entries will not be deleted", error=str(exc))
        return None


def _plan_backend(wanted: str) -> RulesBackend:
    """A plan writes nothing, so it needs no tool: an explicit backend is taken as asked,
    `auto` as this machine would choose it (iptables where it has neither)."""
    if wanted != "auto":
        return RulesBackend(wanted)
    try:
        return _rules_choice(wanted).backend
    except ConfigError:
        return RulesBackend.IPTABLES


def _cmd_plan(args: argparse.Namespace) -> int:
    config, _ = _settings(args)
    state, _, _ = _desired(args, rules=_plan_backend(_wanted_rules(args, config)))
    sys.stdout.write(render(state, args.section))
    return EXIT_OK


def _clear_stale_udp(cluster: Cluster, dataplanes: Dataplanes) -> None:
    """Delete conntrack entries of UDP flows whose endpoint is gone (agent/stale_udp_flows.py)."""
    from ipvsproxy.agent.changes import ServiceInput
    from ipvsproxy.agent.stale_udp_flows import StaleUdpFlows
    from ipvsproxy.core.desired import index_slices
    from ipvsproxy.logs import RepeatedLog

    by_service = index_slices(cluster.slices)
    inputs = {s.key: ServiceInput(s, tuple(by_service.get(s.key, ()))) for s in cluster.services}
    StaleUdpFlows(dataplanes.conntrack, log=RepeatedLog()).clear_after(inputs, full=True)


def _check_scheduler(config: ProxyConfig, dataplanes: Dataplanes) -> None:
    """Refuse to start with a scheduler the kernel lacks, before anything is touched."""
    problem = probe_scheduler(dataplanes.ipvs, config.scheduler)
    if problem is not None:
        raise KernelError(problem)


def _kernel_settings(config: ProxyConfig, dataplanes: Dataplanes, *, conntrack: bool) -> bool:
    """Sysctls and IPVS timeouts, and with `conntrack` the conntrack table size and
    timeouts; whether all were set (failures are logged)."""
    from ipvsproxy.dataplane.sysctl import SysctlFailure

    # Only once IPVS is known to be there: a node without it is left untouched.
    settings_failed = _sysctls(config, conntrack=conntrack)
    if config.ipvs_timeouts is not None:
        try:
            dataplanes.ipvs.set_timeouts(config.ipvs_timeouts)
        except KernelError as exc:
            logger.error("cannot set IPVS timeouts", error=str(exc))
            settings_failed.append(SysctlFailure("ipvs timeouts", str(exc)))
    return not settings_failed


def _cmd_once(args: argparse.Namespace) -> int:
    config, _ = _settings(args)
    choice = _rules_choice(_wanted_rules(args, config))
    with _dataplanes(args.iptables_backend, choice) as dataplanes:
        # The host's addresses as the kernel has them now: NodePorts follow them.
        host = None if args.local_address else dataplanes.links.node_addresses(DUMMY_INTERFACE)
        state, config, cluster = _desired(args, host, dataplanes=dataplanes)
        _check_scheduler(config, dataplanes)
        # Node-wide conntrack tuning is the long-running proxy's (and `sysctls`'), as
        # kube-proxy does it when it starts; a one-shot programming leaves it alone.
        settings_ok = _kernel_settings(config, dataplanes, conntrack=False)
        outcome = full_sync(
            state,
            dataplanes,
            exclude_cidrs=config.exclude_cidrs,
            drain_timeout=config.graceful_termination_timeout,
        )
        for failure in outcome.result.failures:
            logger.error(
                "kernel refused an operation",
                operation=type(failure.operation).__name__,
                error=failure.message,
            )
        if outcome.result.removals_skipped:
            logger.warning("removals postponed to a later sync: an earlier step failed")
        if outcome.result.ok:
            _clear_stale_udp(cluster, dataplanes)
            # Only once this backend's rules are in place (a switch of rules backend).
            for problem in dataplanes.rules.remove_other_backend():
                logger.warning("cannot remove the other rules backend's objects", error=problem)
    result = outcome.result
    logger.info(
        "sync finished",
        operations=len(outcome.plan),
        applied=result.applied,
        failed=len(result.failures),
        virtual_servers=len(state.virtual_servers),
    )
    return EXIT_OK if result.ok and settings_ok else EXIT_KERNEL


def _cmd_show(args: argparse.Namespace) -> int:
    choice = _rules_choice(_wanted_rules(args))
    with _dataplanes(args.iptables_backend, choice) as dataplanes:
        observed = observe(dataplanes, tuple(IPFamily))
    servers = {
        k: v
        for k, v in observed.virtual_servers.items()
        if owned(k, observed.addresses, observed.ipsets)
    }
    shown = dataclasses.replace(
        observed,
        virtual_servers=servers,
        real_servers={k: observed.real_servers.get(k, {}) for k in servers},
    )
    sys.stdout.write(render(shown, args.section, listing=True))
    return EXIT_OK


def _cmd_cleanup(args: argparse.Namespace, config: ProxyConfig | None = None) -> int:
    choice = _rules_choice(_wanted_rules(args, config))
    with _dataplanes(args.iptables_backend, choice, every_backend=True) as dataplanes:
        problems = cleanup(dataplanes)
    for problem in problems:
        logger.error("cleanup step failed", error=problem)
    logger.info("cleanup finished", interface=DUMMY_INTERFACE, failed=len(problems))
    return EXIT_KERNEL if problems else EXIT_OK


def _run_config(args: argparse.Namespace) -> tuple[ProxyConfig, dict[str, object]]:
    """`run`'s settings by kube-proxy's precedence, and the kube-proxy flags given."""
    given = given_flags(args)
    path = given.get("config")
    document = load_document(str(path)) if path else None
    config = effective_config(given, document, source=str(path))
    if isinstance(document, dict):
        _file_logging(args, document.get("logging"))
    return config, given


def _file_logging(args: argparse.Namespace, section: object) -> None:
    """The file's `logging` format and verbosity, where no flag set them (kube-proxy's
    copyLogsFromFlags: the flags win, the file's section counts otherwise)."""
    if not isinstance(section, dict):
        return
    explicit: frozenset[str] = getattr(args, "explicit_logging", frozenset())
    changed = False
    fmt, verbosity = section.get("format"), section.get("verbosity")
    if "format" not in explicit and isinstance(fmt, str) and fmt:
        if fmt not in LOG_FORMATS:
            raise ConfigError(f"logging.format {fmt!r}: one of {', '.join(LOG_FORMATS)}")
        args.log_format, changed = fmt, True
    if "verbosity" not in explicit and isinstance(verbosity, int) and verbosity > 0:
        args.verbosity, changed = verbosity, True
    if changed:
        logging_from_arguments(args)


def _explicit_logging(argv: Sequence[str]) -> frozenset[str]:
    """Which logging settings the command line gives: "format", "verbosity"."""
    found = set()
    for token in argv:
        name = token.split("=", 1)[0]
        if name in ("--logging-format", "--log-format", "--log-level"):
            found.add("format" if name != "--log-level" else "verbosity")
        elif name in ("-v", "--v") or (token.startswith("-v") and token[2:].isdigit()):
            found.add("verbosity")
    return frozenset(found)


def _cmd_run(args: argparse.Namespace) -> int:
    from ipvsproxy.agent.daemon import run_daemon

    if args.kp_version not in (None, "false"):
        sys.stdout.write(version_text(raw=args.kp_version == "raw") + "\n")
        return EXIT_OK
    config, given = _run_config(args)
    node = _node(config, args)
    # kube-proxy's order: write the configuration, else clean up, else initialise.
    if args.kp_write_config_to:
        return _write_config(config, args.kp_write_config_to)
    if args.kp_cleanup:
        return EXIT_OK if args.dataplane == "fake" else _cmd_cleanup(args, config)
    if args.kp_init_only:
        return EXIT_OK if args.dataplane == "fake" else _init_only(config)
    master = given.get("master") or None
    assert master is None or isinstance(master, str)
    shown = configz_document(config, verbosity=args.verbosity, log_format=args.log_format)
    if args.dataplane == "fake":
        from ipvsproxy.dataplane.fake import FakeKernel, fake_dataplanes

        # Everything but the kernel: no sysctls, no sockets, so that many share a machine;
        # nor per-Service traffic series, which would be all zeros (and megabytes).
        wanted = config.rules_backend
        fake_backend = RulesBackend.IPTABLES if wanted == "auto" else RulesBackend(wanted)
        dataplanes = fake_dataplanes(FakeKernel(), fake_backend)
        _check_scheduler(config, dataplanes)
        return run_daemon(config, dataplanes, node=node, master=master, configz=shown)
    from ipvsproxy.dataplane.ipvs import IpvsSocket

    _oom_score_adj(config.oom_score_adj)
    choice = _rules_choice(config.rules_backend)
    with (
        _dataplanes(args.iptables_backend, choice) as dataplanes,
        IpvsSocket() as stats_socket,
    ):
        _check_scheduler(config, dataplanes)
        # Failures logged; the proxy runs on (kube-proxy exits when conntrack fails).
        _kernel_settings(config, dataplanes, conntrack=True)
        return run_daemon(
            config,
            dataplanes,
            node=node,
            master=master,
            traffic=stats_socket.stats,
            configz=shown,
        )


def _write_config(config: ProxyConfig, path: str) -> int:
    import yaml

    text = yaml.safe_dump(config_document(config), sort_keys=True)
    try:
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(text)
    except OSError as exc:
        raise InputError(f"--write-config-to {path}: {exc.strerror or exc}") from exc
    logger.info("Wrote configuration", file=path)
    return EXIT_OK


def _init_only(config: ProxyConfig) -> int:
    """--init-only: what needs full privileges (ip_vs, sysctls, conntrack, IPVS timeouts)."""
    from ipvsproxy.dataplane.ipvs import IpvsSocket

    with IpvsSocket() as ipvs:  # asking for the IPVS family loads ip_vs
        failures = _sysctls(config, conntrack=True)
        if config.ipvs_timeouts is not None:
            try:
                ipvs.set_timeouts(config.ipvs_timeouts)
            except KernelError as exc:
                logger.error("cannot set IPVS timeouts", error=str(exc))
                return EXIT_KERNEL
    if failures:
        return EXIT_KERNEL
    logger.info("System initialized and --init-only specified")
    return EXIT_OK


def _oom_score_adj(value: int | None, path: str = "/proc/self/oom_score_adj") -> None:
    """kube-proxy's oomScoreAdj; a refusal (no CAP_SYS_RESOURCE to lower it) is logged."""
    if value is None:
        return
    try:
        with open(path, "w", encoding="ascii") as stream:
            stream.write(str(value))
    except OSError as exc:
        logger.warning("cannot set oom_score_adj", value=value, error=exc.strerror or str(exc))


def _desired_from_api(
    args: argparse.Namespace, *, rules: RulesBackend
) -> tuple[KernelState, ProxyConfig]:
    """One list of Services, EndpointSlices and this node's Node; the state they make."""
    from ipvsproxy.k8s.client import ClientSettings, connect
    from ipvsproxy.k8s.snapshot import list_once
    from ipvsproxy.k8s.watch import ENDPOINT_SLICES, SERVICES, node_resource

    config, node = _settings(args)
    connection = connect(
        ClientSettings(
            kubeconfig=args.kubeconfig or config.kubeconfig,
            master=args.master,
            qps=config.api_qps,
            burst=config.api_burst,
            content_type=config.api_content_type,
        )
    )
    try:
        transport, limiter = connection.transport, connection.limiter
        services = list_once(SERVICES, transport, limiter=limiter)
        slices = list_once(ENDPOINT_SLICES, transport, limiter=limiter)
        nodes = list_once(node_resource(node.name), transport, limiter=limiter)
    except ApiError as exc:
        raise InputError(f"verify: {exc}") from exc
    finally:
        connection.close()
    node = _with_node_object(node, tuple(nodes.values()))
    node = dataclasses.replace(node, local_addresses=_host_addresses())
    settings = settings_for_node(config.desired_settings(), node)
    settings = dataclasses.replace(settings, rules_backend=rules)
    return desired_state(services.values(), slices.values(), node=node, settings=settings), config


def _cmd_verify(args: argparse.Namespace) -> int:
    from ipvsproxy.core.drift import find_drift, render_drift

    if args.files and (args.kubeconfig or args.master):
        raise InputError("verify: give -f files or an API server (--kubeconfig/--master), not both")
    choice = _rules_choice(_wanted_rules(args, _settings(args)[0]))
    if args.files:
        desired, config = _desired(args, rules=choice.backend)[:2]
    else:
        desired, config = _desired_from_api(args, rules=choice.backend)
    try:
        with _dataplanes(args.iptables_backend, choice) as dataplanes:
            observed = observe(dataplanes, desired.rule_families)
    except KernelError as exc:
        # No IPVS (or no access to it): whether the kernel drifted cannot be told.
        raise InputError(f"verify: cannot read the kernel: {exc}") from exc
    drifts = find_drift(desired, observed, exclude_cidrs=config.exclude_cidrs)
    sys.stdout.write(render_drift(drifts))
    return EXIT_DRIFT if drifts else EXIT_OK


def _cmd_sysctls(args: argparse.Namespace) -> int:
    from ipvsproxy.dataplane.ipvs import IpvsSocket

    config = load_config(args.config) if args.config else ProxyConfig()
    # Asking for the IPVS netlink family makes the kernel load ip_vs, which brings
    # net/ipv4/vs/* into being.
    # It depends on nf_conntrack, which brings net/netfilter/* in.
    with IpvsSocket():
        pass
    return EXIT_KERNEL if _sysctls(config, conntrack=True) else EXIT_OK


def _sysctls(config: ProxyConfig, *, conntrack: bool) -> list[SysctlFailure]:
    """Set the sysctls IPVS mode needs (and the conntrack ones); the failures, logged."""
    from ipvsproxy.dataplane.sysctl import ensure_conntrack, ensure_sysctls

    failures = ensure_sysctls(strict_arp=config.strict_arp)
    if conntrack:
        failures += ensure_conntrack(config.conntrack)
    for failure in failures:
        logger.error("cannot set sysctl", path=failure.path, error=failure.message)
    return failures


_COMMANDS = {
    "plan": _cmd_plan,
    "once": _cmd_once,
    "show": _cmd_show,
    "cleanup": _cmd_cleanup,
    "run": _cmd_run,
    "verify": _cmd_verify,
    "sysctls": _cmd_sysctls,
}


def _flag_names_normalised(argv: Sequence[str]) -> list[str]:
    """kube-proxy's flag names take "_" for "-" (component-base's WordSepNormalizeFunc):
    `--hostname_override=x` is `--hostname-override=x`. Only the names are touched."""
    normalised = []
    for token in argv:
        if token.startswith("--") and "_" in token.split("=", 1)[0]:
            name, sep, value = token.partition("=")
            token = name.replace("_", "-") + sep + value
        normalised.append(token)
    return normalised


def main(argv: Sequence[str] | None = None) -> int:
    argv = _flag_names_normalised(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on a bad flag (its message printed), 0 on --help
        return exc.code if isinstance(exc.code, int) else EXIT_INPUT
    logging_from_arguments(args)
    args.explicit_logging = _explicit_logging(argv)
    try:
        return _COMMANDS[args.command](args)
    except (InputError, ConfigError) as exc:
        logger.error(str(exc))
        return EXIT_INPUT
    except KernelError as exc:
        logger.error(str(exc))
        return EXIT_KERNEL
    except IpvsProxyError as exc:
        logger.error(str(exc))
        return EXIT_KERNEL


if __name__ == "__main__":
    sys.exit(main())
