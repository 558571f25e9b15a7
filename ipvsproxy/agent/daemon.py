"""`ipvsproxy run`: the node agent's process, wired together until SIGTERM or SIGINT.

Reflectors (Services, EndpointSlices, this node's Node) feed the agent's change tracker;
the agent's runner thread syncs the kernel; /healthz and /livez, and /metrics with the
per-Service IPVS traffic series, are served on their own threads. On SIGTERM or SIGINT
everything stops within a second, once a sync in progress has finished, and the
dataplane is left in place, as kube-proxy leaves it: Services keep working while the
proxy restarts or is replaced.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

from loguru import logger

from ipvsproxy.agent.api_path import check_api_path
from ipvsproxy.agent.sync_loop import Agent, AgentSettings
from ipvsproxy.config.kubeproxy_file import configz_document
from ipvsproxy.config.settings import ProxyConfig
from ipvsproxy.core.desired import NodeInfo
from ipvsproxy.core.model import IpvsStats, VirtualServerKey
from ipvsproxy.dataplane.interfaces import Dataplanes
from ipvsproxy.errors import IpvsProxyError
from ipvsproxy.k8s.client import ApiConnection, ClientSettings, connect
from ipvsproxy.k8s.watch import (
    ENDPOINT_SLICES,
    SERVICES,
    ChangeHandler,
    Reflector,
    Resource,
    WatchSettings,
    node_resource,
)
from ipvsproxy.serve.httpserve import HttpServer
from ipvsproxy.serve.metrics import IpvsTrafficCollector, ProxyMetrics, serve_metrics
from ipvsproxy.serve.proxy_health import ProxyHealth, serve_health
from ipvsproxy.serve.service_health import HealthCheckServers

EXIT_OK = 0
# Seconds a sync in progress may take to finish at shutdown: a sync cut short leaves a
# state the next start repairs, but one that finishes leaves nothing to repair. Well
# within the 30 s a pod is given between SIGTERM and SIGKILL.
SYNC_GRACE = 20.0


@contextmanager
def _stop_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` while inside; the previous handlers come back after.
    Off the main thread (tests) signals cannot be caught: only `stop` ends the run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        logger.info("stopping; the dataplane stays in place", signal=signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _reflectors(
    connection: ApiConnection,
    watched: Iterable[tuple[Resource[Any], ChangeHandler[Any]]],
    settings: WatchSettings | None,
) -> list[Reflector[Any]]:
    """One reflector per (resource, handler), all on one connection and its rate limiter."""
    return [
        Reflector(
            resource, connection.transport, handler, limiter=connection.limiter, settings=settings
        )
        for resource, handler in watched
    ]


def agent_settings(config: ProxyConfig, *, node: NodeInfo) -> AgentSettings:
    """The sync loop's settings, every one of them read from config (the one source)."""
    return AgentSettings(
        desired=config.desired_settings(),
        node=node,
        exclude_cidrs=config.exclude_cidrs,
        sync_period=config.sync_period,
        min_sync_period=config.min_sync_period,
        drain_timeout=config.graceful_termination_timeout,
    )


def run_daemon(
    config: ProxyConfig,
    dataplanes: Dataplanes,
    *,
    node: NodeInfo,
    master: str | None = None,
    traffic: Callable[[], Mapping[VirtualServerKey, IpvsStats]] | None = None,
    stop: threading.Event | None = None,
    watch_settings: WatchSettings | None = None,
    configz: Mapping[str, object] | None = None,
) -> int:
    """Run until stopped (SIGTERM, SIGINT, or `stop` set); returns the exit status.

    node: this node's name and addresses (its Node object, watched, adds the rest).

    traffic: reads every virtual server's counters in one dump, for the per-Service
    traffic series (from an IPVS socket of its own: scrapes come from HTTP threads).
    watch_settings: the reflectors' timings (tests shorten backoffs and confirm delays).
    configz: what /configz serves (default: `config` as kube-proxy shows its own).
    """
    settings = agent_settings(config, node=node)
    metrics = ProxyMetrics(families=settings.desired.families)
    # kube-proxy: unhealthy when a queued change waits longer than 2 x syncPeriod.
    health = ProxyHealth(health_timeout=2 * config.sync_period)
    health_checks = HealthCheckServers(healthy=health.is_healthy)
    agent = Agent(
        dataplanes, settings, metrics=metrics, health=health, health_check_ports=health_checks.serve
    )
    agent.udp_flows.report = metrics.conntrack_reconciled
    connection = connect(
        ClientSettings(
            kubeconfig=config.kubeconfig,
            master=master,
            qps=config.api_qps,
            burst=config.api_burst,
            content_type=config.api_content_type,
        ),
        observe=lambda method, host, code, seconds: metrics.api_request(
            method=method, host=host, code=code, seconds=seconds
        ),
    )
    node_name = node.name
    reflectors = _reflectors(
        connection,
        (
            (SERVICES, agent.tracker.services),
            (ENDPOINT_SLICES, agent.tracker.slices),
            (node_resource(node_name), agent.tracker.node),
        ),
        watch_settings,
    )
    with ExitStack() as stack:
        stack.callback(connection.close)
        stack.callback(health_checks.close)
        if traffic is not None:
            metrics.registry.register(IpvsTrafficCollector(traffic, agent.labels_for))
        shown = configz if configz is not None else configz_document(config)
        healthz_address, metrics_address = (
            config.healthz_bind_address,
            config.metrics_bind_address,
        )
        servers: list[tuple[str, Callable[[], HttpServer]]] = []
        # An empty bind address (a flag's) turns the server off, as in kube-proxy.
        if healthz_address is not None:
            servers.append(
                (
                    "healthz",
                    lambda: serve_health(health, healthz_address, on_probe=metrics.probe_answered),
                )
            )
        if metrics_address is not None:
            servers.append(
                (
                    "metrics",
                    lambda: serve_metrics(metrics.registry, metrics_address, configz=shown),
                )
            )
        for name, serve in servers:
            try:
                server = serve()
            except IpvsProxyError as exc:
                # As kube-proxy without bindAddressHardFail: serve Services regardless.
                logger.error("cannot serve {name}", name=name, error=str(exc))
                continue
            stack.callback(server.close)
            logger.info("serving {name}", name=name, address=f"{server.host}:{server.port}")
        stopping = stop if stop is not None else threading.Event()
        stack.enter_context(_stop_signals(stopping))
        runner_thread = agent.runner.start()
        for reflector in reflectors:
            reflector.start()
        # A Service IP as the API server's address: said once, off the start-up path.
        threading.Thread(
            target=check_api_path,
            args=(connection.server,),
            kwargs={
                "in_cluster": not (config.kubeconfig or master),
                "listed": agent.tracker.listed_services,
                "stop": stopping,
            },
            name="api-path-check",
            daemon=True,
        ).start()
        logger.info(
            "watching the API server",
            server=connection.server,
            node=node_name,
            sync_period=f"{settings.sync_period:g}s",
            min_sync_period=f"{settings.min_sync_period:g}s",
        )
        stopping.wait()
        agent.runner.stop()
        for reflector in reflectors:
            reflector.stop(timeout=0.2)
        runner_thread.join(SYNC_GRACE)
        if runner_thread.is_alive():  # health_checks.close() below keeps it from serving on
            logger.warning("stopping during a sync that did not finish", waited=SYNC_GRACE)
    return EXIT_OK
