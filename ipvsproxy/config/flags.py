"""kube-proxy's command-line flags, as data, and how `run` applies them.

`FLAGS` lists every flag kube-proxy's `run` command line takes (cmd/kube-proxy/app's
options.go and server.go, and the logging flags of component-base), with its Go type,
its default as kube-proxy's help prints it, the KubeProxyConfiguration (v1alpha1) field
it sets, and what ipvsproxy does with it (`Status`). The README's flag table is checked
against this list by a test.

Precedence is kube-proxy's: without `--config` the flags given build the configuration
(on top of the defaults); with `--config` the file wins and those flags are ignored,
except the ones kube-proxy takes from the command line anyway (`Flag.file_wins` False:
--hostname-override, --master, the logging flags, and the actions --cleanup,
--init-only, --write-config-to). ipvsproxy warns once about the flags it ignores, where
kube-proxy ignores them silently.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

from loguru import logger

from ipvsproxy.config.kubeproxy_file import config_from_dict, parse_duration
from ipvsproxy.config.settings import (
    API_VERSION,
    KIND,
    BindAddress,
    ProxyConfig,
    hostname_override_value,
)
from ipvsproxy.errors import ConfigError

__all__ = [
    "FLAGS",
    "PROXY_MODE",
    "Flag",
    "Status",
    "add_kube_proxy_flags",
    "effective_config",
    "flags_document",
    "given_flags",
]

PROXY_MODE: Final = "ipvs"
_DEST_PREFIX: Final = "kp_"


class Status(StrEnum):
    """What ipvsproxy does with a kube-proxy flag."""

    SAME = "same"
    """Same meaning, type and default."""
    DIFFERS = "differs"
    """Accepted, but ipvsproxy's behaviour differs (`Flag.note` says how and why)."""
    DEPRECATED = "deprecated"
    """Deprecated in kube-proxy: accepted with one warning (and honoured where noted)."""
    IPTABLES_ONLY = "iptables-only"
    """Only matters to kube-proxy's iptables (or nftables) mode: accepted with one warning."""
    NOT_APPLICABLE = "not applicable in IPVS mode"
    """Accepted with one warning and ignored (`Flag.note` says why)."""


@dataclass(frozen=True, slots=True)
class Flag:
    """One kube-proxy flag."""

    name: str
    """Without the leading dashes."""
    kind: str
    """pflag's type: bool, string, int32, float32, duration, strings (a comma-separated
    list, repeatable), ip, ipport, mapStringBool, level (klog's -v), moduleSpec,
    quantity, version (verflag's: true, false or raw)."""
    default: str
    """As kube-proxy's --help prints it ("" for none)."""
    field: str | None = None
    """The KubeProxyConfiguration (v1alpha1) field it sets, dotted; None: none."""
    status: Status = Status.SAME
    note: str = ""
    """Why it differs, or why it does not apply."""
    file_wins: bool = True
    """kube-proxy ignores the flag when --config is given."""
    short: str | None = None

    @property
    def dest(self) -> str:
        return _DEST_PREFIX + self.name.replace("-", "_")

    @property
    def warns(self) -> bool:
        """Whether giving the flag is worth a warning (it does not do what it says)."""
        return self.status in (Status.DEPRECATED, Status.IPTABLES_ONLY, Status.NOT_APPLICABLE)


_S, _D, _DEP, _IPT, _NA = (
    Status.SAME,
    Status.DIFFERS,
    Status.DEPRECATED,
    Status.IPTABLES_ONLY,
    Status.NOT_APPLICABLE,
)

FLAGS: Final[tuple[Flag, ...]] = (
    # -- the command itself
    Flag("config", "string", "", file_wins=False),
    Flag(
        "write-config-to",
        "string",
        "",
        status=_D,
        note="writes the effective configuration (defaults and flags), as kube-proxy does, "
        "with ipvsproxy's own ipvs.gracefulTerminationTimeout added",
        file_wins=False,
    ),
    Flag(
        "cleanup",
        "bool",
        "false",
        note="what `ipvsproxy cleanup` does: IPVS, kube-ipvs0, ipsets, chains",
        file_wins=False,
    ),
    Flag(
        "init-only",
        "bool",
        "false",
        note="loads ip_vs and sets the sysctls and conntrack settings, as `ipvsproxy sysctls`",
        file_wins=False,
    ),
    Flag(
        "version",
        "version",
        "false",
        status=_D,
        note="prints ipvsproxy's version and the kube-proxy release it follows",
        file_wins=False,
    ),
    Flag(
        "feature-gates",
        "mapStringBool",
        "",
        "featureGates",
        _D,
        "accepted; no gate changes what ipvsproxy programs, each one given is named as ignored",
    ),
    Flag(
        "proxy-mode",
        "string",
        "",
        "mode",
        _D,
        "ipvs only: another mode is an error naming it, even with --config",
    ),
    # -- API server
    Flag("kubeconfig", "string", "", "clientConnection.kubeconfig"),
    Flag("master", "string", "", file_wins=False),
    Flag(
        "kube-api-content-type",
        "string",
        "application/vnd.kubernetes.protobuf",
        "clientConnection.contentType",
        _D,
        "only JSON is spoken: protobuf (the default) is taken as JSON, another type is "
        "warned about",
    ),
    Flag("kube-api-burst", "int32", "10", "clientConnection.burst"),
    Flag("kube-api-qps", "float32", "5", "clientConnection.qps"),
    Flag(
        "config-sync-period",
        "duration",
        "15m0s",
        "configSyncPeriod",
        _NA,
        "ipvsproxy's watches never relist on a timer; a full sync every syncPeriod repairs",
    ),
    # -- node
    Flag("hostname-override", "string", "", file_wins=False),
    Flag(
        "bind-address",
        "ip",
        "0.0.0.0",
        "bindAddress",
        note="the node's primary IP when set (unless --node-ip gives it)",
    ),
    Flag(
        "bind-address-hard-fail",
        "bool",
        "false",
        "bindAddressHardFail",
        _NA,
        "a server that cannot bind is logged and the proxy runs on",
    ),
    Flag(
        "healthz-bind-address",
        "ipport",
        "0.0.0.0:10256",
        "healthzBindAddress",
        note="empty disables the server",
    ),
    Flag(
        "metrics-bind-address",
        "ipport",
        "127.0.0.1:10249",
        "metricsBindAddress",
        note="empty disables the server",
    ),
    Flag(
        "healthz-port",
        "int32",
        "10256",
        status=_DEP,
        note="honoured as kube-proxy does: 0 disables, else the port of a port-less "
        "--healthz-bind-address",
    ),
    Flag(
        "metrics-port",
        "int32",
        "10249",
        status=_DEP,
        note="honoured as kube-proxy does: 0 disables, else the port of a port-less "
        "--metrics-bind-address",
    ),
    Flag(
        "profiling",
        "bool",
        "false",
        "enableProfiling",
        _NA,
        "no /debug/pprof: Python has no Go profiler to serve",
    ),
    Flag(
        "show-hidden-metrics-for-version",
        "string",
        "",
        "showHiddenMetricsForVersion",
        _NA,
        "ipvsproxy hides no metric",
    ),
    Flag(
        "oom-score-adj",
        "int32",
        "-999",
        "oomScoreAdj",
        note="written to /proc/self/oom_score_adj by `run` (not with --dataplane fake)",
    ),
    # -- IPVS
    Flag("ipvs-scheduler", "string", "", "ipvs.scheduler", note='"" is rr'),
    Flag("ipvs-sync-period", "duration", "30s", "syncPeriod"),
    Flag(
        "ipvs-min-sync-period",
        "duration",
        "1s",
        "minSyncPeriod",
        note="without --config kube-proxy's effective default is 1s (its iptables block's); "
        "a file's ipvs section defaults it to 0s",
    ),
    Flag("ipvs-exclude-cidrs", "strings", "[]", "ipvs.excludeCIDRs"),
    Flag("ipvs-strict-arp", "bool", "false", "ipvs.strictARP"),
    Flag("ipvs-tcp-timeout", "duration", "0s", "ipvs.tcpTimeout"),
    Flag("ipvs-tcpfin-timeout", "duration", "0s", "ipvs.tcpFinTimeout"),
    Flag("ipvs-udp-timeout", "duration", "0s", "ipvs.udpTimeout"),
    Flag(
        "rules-backend",
        "string",
        "auto",
        "ipvs.rulesBackend",
        _D,
        "ipvsproxy's own (kube-proxy has no such flag): what holds the sets and the fixed "
        "rules beside IPVS, iptables (ipsets and iptables chains) or nftables (one table per "
        "family); auto: iptables where an iptables and ipset are installed, else nftables",
    ),
    # -- masquerading and local traffic
    Flag("masquerade-all", "bool", "false", "iptables.masqueradeAll"),
    Flag("iptables-masquerade-bit", "int32", "14", "iptables.masqueradeBit"),
    Flag("cluster-cidr", "string", "", "clusterCIDR"),
    Flag("detect-local-mode", "string", "", "detectLocalMode", note='"" is ClusterCIDR'),
    Flag("pod-bridge-interface", "string", "", "detectLocal.bridgeInterface"),
    Flag("pod-interface-name-prefix", "string", "", "detectLocal.interfaceNamePrefix"),
    Flag("nodeport-addresses", "strings", "[]", "nodePortAddresses"),
    Flag(
        "iptables-localhost-nodeports",
        "bool",
        "true",
        "iptables.localhostNodePorts",
        _IPT,
        "IPVS mode never serves NodePorts on localhost",
    ),
    Flag(
        "iptables-sync-period",
        "duration",
        "30s",
        "iptables.syncPeriod",
        _IPT,
        "in IPVS mode kube-proxy takes --ipvs-sync-period",
    ),
    Flag(
        "iptables-min-sync-period",
        "duration",
        "1s",
        "iptables.minSyncPeriod",
        _IPT,
        "in IPVS mode kube-proxy takes --ipvs-min-sync-period",
    ),
    # -- conntrack
    Flag("conntrack-max-per-core", "int32", "32768", "conntrack.maxPerCore"),
    Flag("conntrack-min", "int32", "131072", "conntrack.min"),
    Flag(
        "conntrack-tcp-timeout-established",
        "duration",
        "24h0m0s",
        "conntrack.tcpEstablishedTimeout",
    ),
    Flag("conntrack-tcp-timeout-close-wait", "duration", "1h0m0s", "conntrack.tcpCloseWaitTimeout"),
    Flag("conntrack-tcp-be-liberal", "bool", "false", "conntrack.tcpBeLiberal"),
    Flag("conntrack-udp-timeout", "duration", "0s", "conntrack.udpTimeout"),
    Flag("conntrack-udp-timeout-stream", "duration", "0s", "conntrack.udpStreamTimeout"),
    # -- logging (component-base's logs API: the flags win over the file's `logging`)
    Flag("v", "level", "0", "logging.verbosity", file_wins=False, short="v"),
    Flag(
        "vmodule",
        "moduleSpec",
        "",
        "logging.vmodule",
        _D,
        "accepted and validated; per-file verbosity is not applied (-v is)",
        file_wins=False,
    ),
    Flag("logging-format", "string", "text", "logging.format", file_wins=False),
    Flag(
        "log-flush-frequency",
        "duration",
        "5s",
        "logging.flushFrequency",
        _NA,
        "every line is written at once, nothing to flush",
        file_wins=False,
    ),
    Flag(
        "log-text-split-stream",
        "bool",
        "false",
        "logging.options.text.splitStream",
        _NA,
        "every line goes to stderr",
        file_wins=False,
    ),
    Flag(
        "log-text-info-buffer-size",
        "quantity",
        "0",
        "logging.options.text.infoBufferSize",
        _NA,
        "info lines are not buffered",
        file_wins=False,
    ),
    Flag(
        "log-json-split-stream",
        "bool",
        "false",
        "logging.options.json.splitStream",
        _NA,
        "every line goes to stderr",
        file_wins=False,
    ),
    Flag(
        "log-json-info-buffer-size",
        "quantity",
        "0",
        "logging.options.json.infoBufferSize",
        _NA,
        "info lines are not buffered",
        file_wins=False,
    ),
)

# Flags that only the logging set-up reads (logs.py adds them to every command).
LOGGING_FLAGS: Final = frozenset({"v", "vmodule", "logging-format"})
# Flags `run` reads itself rather than through the configuration document.
ACTION_FLAGS: Final = frozenset(
    {"config", "write-config-to", "cleanup", "init-only", "version", "master", "hostname-override"}
)
BY_NAME: Final[Mapping[str, Flag]] = {flag.name: flag for flag in FLAGS}

# --- pflag's value syntax ------------------------------------------------------------------

_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def go_bool(text: str) -> bool:
    """strconv.ParseBool, which pflag's bool flags use."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (true, false, 1, 0, t, f)")


def _int32(text: str) -> int:
    try:
        value = int(text, 0) if text.strip().lower().startswith(("0x", "0o", "0b")) else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if not -(1 << 31) <= value < 1 << 31:
        raise argparse.ArgumentTypeError(f"{text} is out of range for a 32-bit integer")
    return value


def _float32(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None


def _duration(text: str) -> str:
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _strings(text: str) -> list[str]:
    # pflag's StringSlice reads one CSV record; an empty value is an empty list.
    return [] if text == "" else text.split(",")


def _ip(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None
    return text


def _ipport(text: str) -> str:
    # utilflag.IPPortVar: empty, an IP, or IP:port (checked again when the file reader
    # parses it, with the default port).
    if text == "":
        return text
    host, sep, port = text.rpartition(":")
    candidate = text.strip("[]")
    try:
        ipaddress.ip_address(candidate)
        return text
    except ValueError:
        pass
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP or IP:port") from None
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP or IP:port")
    return text


def _map_string_bool(text: str) -> dict[str, bool]:
    gates: dict[str, bool] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"{part!r}: expected key=true|false")
        gates[key.strip()] = go_bool(value.strip())
    return gates


def _level(text: str) -> int:
    value = _int32(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"verbosity {text} must be >= 0")
    return value


def _quantity(text: str) -> str:
    if not text or not text[0].isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a quantity such as 0 or 64Ki")
    return text


def _version(text: str) -> str:
    if text == "raw":
        return text
    return "true" if go_bool(text) else "false"


_PARSERS: Final[Mapping[str, Callable[[str], object]]] = {
    "version": _version,
    "bool": go_bool,
    "string": str,
    "int32": _int32,
    "float32": _float32,
    "duration": _duration,
    "strings": _strings,
    "ip": _ip,
    "ipport": _ipport,
    "mapStringBool": _map_string_bool,
    "level": _level,
    "moduleSpec": str,
    "quantity": _quantity,
}


class _Append(argparse.Action):
    """pflag's repeatable list flags: every use adds its items."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        held = getattr(namespace, self.dest, None)
        merged: object
        if isinstance(values, dict):
            merged = {**(held or {}), **values}
        else:
            assert isinstance(values, list)
            merged = [*(held or []), *values]
        setattr(namespace, self.dest, merged)


def add_kube_proxy_flags(parser: argparse.ArgumentParser, *, skip: Iterable[str] = ()) -> None:
    """Add kube-proxy's flags to `parser` (default None: not given), except `skip` and
    the logging flags (logs.py adds those to every command)."""
    skipped = set(skip) | LOGGING_FLAGS
    for flag in FLAGS:
        if flag.name in skipped:
            continue
        parse = _PARSERS[flag.kind]
        help_text = _help(flag)
        if flag.kind in ("bool", "version"):
            parser.add_argument(
                f"--{flag.name}",
                dest=flag.dest,
                nargs="?",
                const=parse("true"),
                default=None,
                type=parse,
                metavar="BOOL",
                help=help_text,
            )
        elif flag.kind in ("strings", "mapStringBool"):
            parser.add_argument(
                f"--{flag.name}",
                dest=flag.dest,
                action=_Append,
                default=None,
                type=parse,
                metavar=flag.kind.upper(),
                help=help_text,
            )
        else:
            parser.add_argument(
                f"--{flag.name}",
                dest=flag.dest,
                default=None,
                type=parse,
                metavar=flag.kind.upper(),
                help=help_text,
            )


def _help(flag: Flag) -> str:
    own = flag.note.startswith("ipvsproxy's own")
    parts = [f"--{flag.name}" if own else f"kube-proxy's --{flag.name}"]
    if flag.default:
        parts.append(f"(default {flag.default})")
    if flag.status is not Status.SAME and flag.note:
        parts.append(f"[{flag.status.value}: {flag.note}]")
    return " ".join(parts).replace("%", "%%")


def given_flags(args: argparse.Namespace) -> dict[str, object]:
    """The kube-proxy flags given on the command line, by name, with their values."""
    given: dict[str, object] = {}
    for flag in FLAGS:
        value = getattr(args, flag.dest, None)
        if value is not None:
            given[flag.name] = value
    return given


def flags_document(given: Mapping[str, object]) -> dict[str, object]:
    """A KubeProxyConfiguration (v1alpha1) holding the flags in `given` that map onto a
    field; the file reader turns it into settings as it does a file."""
    document: dict[str, object] = {"apiVersion": API_VERSION, "kind": KIND}
    for name, value in given.items():
        flag = BY_NAME[name]
        # iptables-only fields would not be read; logging is set up from the flags.
        if flag.field is None or flag.status is Status.IPTABLES_ONLY:
            continue
        if flag.field.startswith("logging."):
            continue
        _put(document, flag.field, value)
    return document


def _put(document: dict[str, object], path: str, value: object) -> None:
    *sections, name = path.split(".")
    container = document
    for section in sections:
        inner = container.setdefault(section, {})
        assert isinstance(inner, dict)
        container = inner
    container[name] = value


# --- the configuration `run` runs with -----------------------------------------------------

# Gates whose behaviour ipvsproxy always has (GA in kube-proxy): asking for it is a no-op,
# turning it off is not possible.
ALWAYS_ON_GATES: Final = frozenset(
    {
        "KubeProxyDrainingTerminatingNodes",
        "LoadBalancerIPMode",
        "ServiceTrafficDistribution",
        "TopologyAwareHints",
    }
)


def effective_config(
    given: Mapping[str, object], file_document: object | None, *, source: str
) -> ProxyConfig:
    """The settings `run` runs with, by kube-proxy's precedence (see the module's
    docstring): `file_document` (the parsed --config file; None without one) or else the
    flags in `given`, then --hostname-override. Logs one warning for the flags ignored
    and one per flag that does nothing here. ConfigError on an invalid value."""
    mode = given.get("proxy-mode")
    if mode not in (None, "", PROXY_MODE):
        raise ConfigError(
            f"--proxy-mode={mode}: ipvsproxy implements only the {PROXY_MODE} proxy mode"
        )
    _warn_inert(given, with_file=file_document is not None)
    if file_document is not None:
        ignored = [f"--{name}" for name in given if BY_NAME[name].file_wins]
        if ignored:
            logger.warning(
                "flags ignored because --config is given (kube-proxy ignores them too)",
                flags=",".join(ignored),
            )
        config = config_from_dict(file_document, source=source)
    else:
        document = flags_document(given)
        # kube-proxy converts its built-in defaults with mode "" (iptables), whose
        # minSyncPeriod default is 1s; only a file's ipvs section defaults it to 0s.
        document.setdefault("minSyncPeriod", "1s")
        config = config_from_dict(document, source="command line")
        config = _servers_from_flags(config, given)
    hostname = given.get("hostname-override")
    if isinstance(hostname, str) and hostname:
        value = hostname_override_value(hostname)
        if value is None:
            raise ConfigError("empty hostname-override is invalid")
        config = replace(config, hostname_override=value)
    _warn_gates(config.feature_gates)
    return config


def _warn_inert(given: Mapping[str, object], *, with_file: bool) -> None:
    for name in given:
        flag = BY_NAME[name]
        if not flag.warns or (with_file and flag.file_wins):
            continue
        if flag.status is Status.DEPRECATED:
            logger.warning("flag --{name} has been deprecated: {note}", name=name, note=flag.note)
        else:
            logger.warning(
                "flag --{name} ignored ({status}): {note}",
                name=name,
                status=flag.status.value,
                note=flag.note,
            )


def _warn_gates(gates: Iterable[tuple[str, bool]]) -> None:
    # A gate ipvsproxy always behaves as with, asked for on, is not worth a line.
    ignored = [
        f"{name}={str(on).lower()}" for name, on in gates if not (on and name in ALWAYS_ON_GATES)
    ]
    if ignored:
        logger.warning(
            "feature gates ignored: none changes what ipvsproxy programs",
            gates=",".join(ignored),
        )


def _servers_from_flags(config: ProxyConfig, given: Mapping[str, object]) -> ProxyConfig:
    """An empty --healthz-bind-address / --metrics-bind-address, or the deprecated
    --healthz-port / --metrics-port 0, turns that server off (flags only, as in
    kube-proxy: a file's empty address takes the default)."""
    changes: dict[str, BindAddress | None] = {}
    for server, port_flag, field in (
        ("healthz", "healthz-port", "healthz_bind_address"),
        ("metrics", "metrics-port", "metrics_bind_address"),
    ):
        address = given.get(f"{server}-bind-address")
        port = given.get(port_flag)
        if address == "" or port == 0:
            changes[field] = None
        elif isinstance(port, int) and isinstance(address, str):
            # A port-less address takes the deprecated flag's port (AppendPortIfNeeded).
            try:
                changes[field] = BindAddress.parse(address, default_port=port)
            except ValueError as exc:
                raise ConfigError(f"--{server}-bind-address {address!r}: {exc}") from None
    return replace(config, **changes) if changes else config  # type: ignore[arg-type]


# --- the README's table --------------------------------------------------------------------


def readme_status(flag: Flag) -> str:
    """The flag's status as the README's table words it."""
    if flag.status is Status.SAME:
        return "same" + (f" ({flag.note})" if flag.note else "")
    if flag.status is Status.DEPRECATED:
        return f"same, deprecated in kube-proxy: one warning ({flag.note})"
    if flag.status in (Status.IPTABLES_ONLY, Status.NOT_APPLICABLE):
        return f"not applicable in IPVS mode: {flag.note}; one warning"
    return f"differs: {flag.note}"


def readme_table() -> str:
    """The README's kube-proxy flag table (markdown)."""
    lines = [
        "| flag | ipvsproxy | type | default | KubeProxyConfiguration field |",
        "|---|---|---|---|---|",
    ]
    for flag in FLAGS:
        default = f"`{flag.default}`" if flag.default else ""
        field = f"`{flag.field}`" if flag.field else ""
        with_file = "" if flag.file_wins else " (wins over --config)"
        lines.append(
            f"| `--{flag.name}` | {readme_status(flag)}{with_file} | {flag.kind} | {default} "
            f"| {field} |"
        )
    return "\n".join(lines) + "\n"
