"""deploy/: builds with the real kubectl, every object valid for a current Kubernetes
(OpenAPI schemas, strict), RBAC equal to the API calls the code makes, the ConfigMap
loadable by ipvsproxy's own loader, and the DaemonSet wired to what the code serves."""

from __future__ import annotations

import ast
import copy
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from ipvsproxy_testkit.testapi import Store, TestAPIServer

import ipvsproxy.k8s.watch as watch
from ipvsproxy.cli import _parser
from ipvsproxy.config.flags import effective_config, given_flags
from ipvsproxy.config.kubeproxy_file import load_config
from ipvsproxy.k8s.client import ClientSettings, connect
from ipvsproxy.k8s.watch import Reflector, Resource, Response

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BUILDS = [
    "deploy",
    "deploy/overlays/replace-kube-proxy",
    "deploy/overlays/restore-kube-proxy",
    "deploy/overlays/without-kube-proxy",
    "deploy/hollow",
]
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
# The schemas of this release are bundled with kubernetes-validate (no network needed).
KUBERNETES_VERSION = "1.34.0"
INSTALL_HINT = "kubectl not found: install it (on Debian: apt-get install kubernetes-client)"


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(INSTALL_HINT)
    return path


def build(directory: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(ROOT / directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def manifests() -> list[Path]:
    """Every Kubernetes object file under deploy/ (not the kustomizations, not demo data)."""
    return sorted(
        path
        for path in DEPLOY.rglob("*.yaml")
        if path.name != "kustomization.yaml" and "demo" not in path.relative_to(DEPLOY).parts
    )


def find(objects: Sequence[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return build("deploy")


def daemonset(objects: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "DaemonSet", "ipvsproxy")


# --- builds and schemas ------------------------------------------------------------------------


@pytest.mark.parametrize("directory", BUILDS)
def test_kustomization_builds_and_validates_strictly(directory: str) -> None:
    objects = build(directory)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_validates_strictly(path: Path) -> None:
    for obj in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_a_misspelt_field(base: list[dict[str, Any]]) -> None:
    # The check above can fail: a field the schema does not know is an error.
    broken = copy.deepcopy(daemonset(base))
    broken["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kubectl_missing_fails_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match="apt-get install kubernetes-client"):
        kubectl()


def test_base_holds_the_agents_objects(base: list[dict[str, Any]]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in base)
    assert kinds == [
        ("ClusterRole", "ipvsproxy"),
        ("ClusterRoleBinding", "ipvsproxy"),
        ("ConfigMap", "ipvsproxy"),
        ("DaemonSet", "ipvsproxy"),
        ("ServiceAccount", "ipvsproxy"),
    ]
    namespaced = [o for o in base if o["kind"] not in ("ClusterRole", "ClusterRoleBinding")]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"kube-system"}


# --- RBAC equals the API calls ---------------------------------------------------------------


def resources_in_code() -> list[Resource[Any]]:
    """Every collection the code reads: the Resources ipvsproxy.k8s.watch defines."""
    found = [value for value in vars(watch).values() if isinstance(value, Resource)]
    return [*found, watch.node_resource("node-1")]


def test_resources_are_defined_only_in_the_watch_module() -> None:
    # A Resource built anywhere else would be a call this test does not see.
    offenders = []
    for path in (ROOT / "ipvsproxy").rglob("*.py"):
        if path == ROOT / "ipvsproxy" / "k8s" / "watch.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Resource":
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_only_the_client_module_talks_to_the_api_server_and_only_with_get() -> None:
    client = (ROOT / "ipvsproxy" / "k8s" / "client.py").read_text()
    methods = {
        node.value.value
        for node in ast.walk(ast.parse(client))
        if isinstance(node, ast.keyword)
        and node.arg == "method"
        and isinstance(node.value, ast.Constant)
    }
    assert methods == {"GET"}
    users = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "ipvsproxy").rglob("*.py")
        if "testapi" not in path.relative_to(ROOT).parts
        and any(
            isinstance(node, ast.Import | ast.ImportFrom)
            and any(
                name == "kubernetes" or name.startswith("kubernetes.")
                for name in (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
            )
            for node in ast.walk(ast.parse(path.read_text()))
        )
    ]
    assert users == ["ipvsproxy/k8s/client.py"]


class Recorder:
    """The real transport; every request recorded, and the reflector stopped at its
    first watch (a list and a watch are all the calls a reflector ever makes)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.reflector: Reflector[Any] | None = None

    def get(
        self, path: str, query: Sequence[tuple[str, str]], *, timeout: tuple[float, float]
    ) -> Response:
        self.requests.append((path, dict(query)))
        if dict(query).get("watch") == "true" and self.reflector is not None:
            self.reflector.stop()
        return self.inner.get(path, query, timeout=timeout)  # type: ignore[no-any-return]


class Handler:
    def replace(self, items: object) -> None: ...
    def upsert(self, key: str, value: object) -> None: ...
    def delete(self, key: str) -> None: ...
    def listed(self) -> None: ...


def rbac_request(path: str, query: dict[str, str]) -> tuple[str, str, str]:
    """(apiGroup, resource, verb) of a GET, as the API server's request info sees it."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    if rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]
    if len(rest) == 1:
        return group, rest[0], "watch" if query.get("watch") in ("true", "1") else "list"
    return group, rest[0], "get"


def rules_of(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.fixture
def api_calls() -> Iterator[set[tuple[str, str, str]]]:
    server = TestAPIServer(Store()).start()
    connection = connect(ClientSettings(master=server.url))
    calls: set[tuple[str, str, str]] = set()
    try:
        for resource in resources_in_code():
            recorder = Recorder(connection.transport)
            reflector = Reflector(resource, recorder, Handler())  # type: ignore[arg-type]
            recorder.reflector = reflector
            reflector.run()
            assert reflector.has_listed, resource.kind
            calls |= {rbac_request(path, query) for path, query in recorder.requests}
        yield calls
    finally:
        connection.close()
        server.stop()


def test_cluster_role_grants_exactly_the_calls_the_code_makes(
    base: list[dict[str, Any]], api_calls: set[tuple[str, str, str]]
) -> None:
    assert api_calls == {
        ("", "services", "list"),
        ("", "services", "watch"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("discovery.k8s.io", "endpointslices", "watch"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
    }
    assert rules_of(find(base, "ClusterRole", "ipvsproxy")) == api_calls


def test_binding_ties_the_role_to_the_pods_service_account(base: list[dict[str, Any]]) -> None:
    binding = find(base, "ClusterRoleBinding", "ipvsproxy")
    account = find(base, "ServiceAccount", "ipvsproxy")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "ipvsproxy",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "ipvsproxy", "namespace": "kube-system"}
    ]
    pod = daemonset(base)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


# --- the ConfigMap and the DaemonSet -------------------------------------------------------


def test_config_map_loads_with_the_proxys_own_loader(
    base: list[dict[str, Any]], tmp_path: Path
) -> None:
    path = tmp_path / "configmap.yaml"
    path.write_text(yaml.safe_dump(find(base, "ConfigMap", "ipvsproxy")))
    config = load_config(path)
    assert config.scheduler == "rr"
    assert config.healthz_bind_address.port == 10256
    assert [str(n) for n in config.cluster_cidrs] == ["10.244.0.0/16"]
    mode = yaml.safe_load(find(base, "ConfigMap", "ipvsproxy")["data"]["config.conf"])["mode"]
    assert mode == "ipvs"


def test_daemonset_runs_on_every_linux_node_in_the_host_network(
    base: list[dict[str, Any]],
) -> None:
    ds = daemonset(base)
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }


def containers(base: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    pod = daemonset(base)["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["initContainers"] + pod["containers"]}


def test_agent_has_only_the_capabilities_it_needs(base: list[dict[str, Any]]) -> None:
    agent = containers(base)["ipvsproxy"]["securityContext"]
    assert agent["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert agent.get("privileged", False) is False
    assert agent["allowPrivilegeEscalation"] is False
    assert agent["readOnlyRootFilesystem"] is True
    # Only the init container that writes /proc/sys is privileged.
    assert containers(base)["sysctls"]["securityContext"] == {"privileged": True}


def test_agent_mounts(base: list[dict[str, Any]]) -> None:
    pod = daemonset(base)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in containers(base)["ipvsproxy"]["volumeMounts"]}
    assert mounts["/lib/modules"]["readOnly"] is True
    assert volumes[mounts["/lib/modules"]["name"]]["hostPath"]["path"] == "/lib/modules"
    lock = volumes[mounts["/run/xtables.lock"]["name"]]["hostPath"]
    assert lock == {"path": "/run/xtables.lock", "type": "FileOrCreate"}
    config = volumes[mounts["/etc/ipvsproxy"]["name"]]["configMap"]["name"]
    assert config == "ipvsproxy"
    # kubeadm's kube-proxy kubeconfig, where the config file's clientConnection.kubeconfig
    # looks for it.
    kubeconfig_mount = mounts["/var/lib/ipvsproxy"]
    assert kubeconfig_mount["readOnly"] is True
    assert volumes[kubeconfig_mount["name"]]["configMap"] == {
        "name": "kube-proxy",
        "items": [{"key": "kubeconfig.conf", "path": "kubeconfig.conf"}],
    }


def test_the_api_server_is_reached_without_a_service_ip(base: list[dict[str, Any]]) -> None:
    pod = daemonset(base)["spec"]["template"]["spec"]
    # Not ClusterFirstWithHostNet: the cluster DNS is a ClusterIP too.
    assert pod["dnsPolicy"] == "Default"
    agent = containers(base)["ipvsproxy"]
    parsed = _parser().parse_args(["run", *agent["args"]])
    # The settings the agent runs with, by kube-proxy's precedence of the mounted config
    # file over the flags: a kubeconfig, so not the in-cluster configuration that dials
    # the kubernetes Service.
    (configmap,) = (
        o for o in base if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "ipvsproxy"
    )
    document = yaml.safe_load(configmap["data"]["config.conf"])
    config = effective_config(given_flags(parsed), document, source="config.conf")
    assert config.kubeconfig == "/var/lib/ipvsproxy/kubeconfig.conf"
    mounted = {m["mountPath"] for m in agent["volumeMounts"]}
    assert str(Path(config.kubeconfig).parent) in mounted
    assert pod.get("automountServiceAccountToken", True) is True  # its tokenFile


def test_without_kube_proxy_overlay_uses_its_own_copy_of_the_kubeconfig(
    base: list[dict[str, Any]],
) -> None:
    objects = build("deploy/overlays/without-kube-proxy")
    assert not [o for o in objects if o["metadata"]["name"] == "kube-proxy"]
    own = find(objects, "ConfigMap", "ipvsproxy-kubeconfig")
    kubeconfig = yaml.safe_load(own["data"]["kubeconfig.conf"])
    (context,) = kubeconfig["contexts"]
    assert context["name"] == kubeconfig["current-context"]
    (user,) = kubeconfig["users"]
    assert user["user"] == {"tokenFile": f"{SERVICE_ACCOUNT}/token"}
    (cluster,) = kubeconfig["clusters"]
    assert cluster["cluster"]["certificate-authority"] == f"{SERVICE_ACCOUNT}/ca.crt"
    # The same DaemonSet as the base's but for the kubeconfig volume's ConfigMap.
    theirs, ours = copy.deepcopy(daemonset(base)), daemonset(objects)
    for ds, name in ((theirs, "kube-proxy"), (ours, "ipvsproxy-kubeconfig")):
        volumes = ds["spec"]["template"]["spec"]["volumes"]
        (volume,) = [v for v in volumes if v["name"] == "kubeconfig"]
        assert volume["configMap"].pop("name") == name
        volumes.sort(key=lambda v: v["name"])
    assert theirs == ours


def test_commands_are_what_the_cli_accepts(base: list[dict[str, Any]]) -> None:
    image_entrypoint = ["ipvsproxy", "run"]  # the Dockerfile's (tests/test_dockerfile.py)
    agent = containers(base)["ipvsproxy"]
    assert "command" not in agent
    assert "--hostname-override=$(NODE_NAME)" in agent["args"]
    (env,) = [e for e in agent["env"] if e["name"] == "NODE_NAME"]
    assert env["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    parser = _parser()
    parsed = parser.parse_args([*image_entrypoint[1:], *agent["args"]])
    assert parsed.kp_hostname_override == "$(NODE_NAME)"  # kubelet expands it
    assert parsed.kp_config == "/etc/ipvsproxy/config.conf"
    init = containers(base)["sysctls"]["command"]
    assert init[0] == "ipvsproxy"
    parser.parse_args(init[1:])


def test_probes_ask_the_healthz_server(base: list[dict[str, Any]]) -> None:
    agent = containers(base)["ipvsproxy"]
    assert agent["livenessProbe"]["httpGet"] == {"path": "/livez", "port": 10256}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 10256}


def test_image_tag_is_the_package_version(base: list[dict[str, Any]]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {c["image"] for c in containers(base).values()}
    assert images == {f"ipvsproxy:{version}"}


# --- the kube-proxy switch ------------------------------------------------------------------


def test_replace_overlay_parks_kube_proxy_and_restore_unparks_it() -> None:
    replace = build("deploy/overlays/replace-kube-proxy")
    restore = build("deploy/overlays/restore-kube-proxy")
    assert daemonset(replace) == daemonset(build("deploy"))
    parked = find(replace, "DaemonSet", "kube-proxy")
    back = find(restore, "DaemonSet", "kube-proxy")
    assert [o["kind"] for o in restore] == ["DaemonSet"]  # restore leaves ipvsproxy out
    parked_selector = parked["spec"]["template"]["spec"].pop("nodeSelector")
    back_selector = back["spec"]["template"]["spec"].pop("nodeSelector")
    assert parked == back  # the same object but for the parking key
    extra = parked_selector.keys() - back_selector.keys()
    assert extra == {"ipvsproxy.io/kube-proxy-parked"}
    assert {k: v for k, v in parked_selector.items() if k not in extra} == back_selector
    # kubeadm's selector and labels, unchanged (the selector of a DaemonSet is immutable).
    assert parked["spec"]["selector"] == {"matchLabels": {"k8s-app": "kube-proxy"}}
    assert parked["metadata"]["namespace"] == "kube-system"


# --- hollow agents -------------------------------------------------------------------------


def test_hollow_agents_run_the_fake_dataplane_unprivileged_on_the_pod_network(
    base: list[dict[str, Any]], tmp_path: Path
) -> None:
    objects = build("deploy/hollow")
    deployment = find(objects, "Deployment", "ipvsproxy-hollow")
    pod = deployment["spec"]["template"]["spec"]
    assert "hostNetwork" not in pod and pod["serviceAccountName"] == "ipvsproxy-hollow"
    (agent,) = pod["containers"]
    security = agent["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]} and security["runAsNonRoot"] is True
    parsed = _parser().parse_args(["run", *agent["args"]])
    assert parsed.dataplane == "fake"
    assert parsed.kp_hostname_override == "$(POD_NAME)"  # one node name per pod
    (env,) = agent["env"]
    assert env["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # Its configuration loads; the API server from the mounted kubeconfig.
    config_map = find(objects, "ConfigMap", "ipvsproxy-hollow")
    path = tmp_path / "config.conf"
    path.write_text(config_map["data"]["config.conf"])
    config = load_config(path)
    assert config.healthz_bind_address.port == 10256
    kubeconfig = yaml.safe_load(config_map["data"]["config.conf"])["clientConnection"]
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    assert kubeconfig["kubeconfig"] == f"{mounts['kubeconfig']}/kubeconfig.conf"
    kubeconfig_map = find(objects, "ConfigMap", "ipvsproxy-hollow-kubeconfig")
    assert "kubeconfig.conf" in kubeconfig_map["data"]
    assert agent["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 10256}
    # The real agent's rules, bound to the hollow agents' account.
    role = find(objects, "ClusterRole", "ipvsproxy-hollow")
    assert role["rules"] == find(base, "ClusterRole", "ipvsproxy")["rules"]
    binding = find(objects, "ClusterRoleBinding", "ipvsproxy-hollow")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "ipvsproxy-hollow", "namespace": "ipvsproxy-hollow"}
    ]
    assert {c["image"] for c in pod["containers"]} == {
        c["image"] for c in containers(base).values()
    }
