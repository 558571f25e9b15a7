"""A small kubelet: one pod's containers, from its spec, run under crun in the sandbox.

`PodRunner` takes a pod template (a DaemonSet's `spec.template`, as `kubectl kustomize`
prints it), the objects its volumes name (ConfigMaps) and an image's root filesystem,
and runs its init containers to completion and then its containers, the way kubelet and
a CRI runtime would set them up:

- command: the container's `command`, else the image's entrypoint; then `args`; `$(VAR)`
  expanded from the container's env (values and `fieldRef` spec.nodeName/metadata.name/
  metadata.namespace), as kubelet does; env: the image's, kubelet's service variables
  (KUBERNETES_SERVICE_HOST/PORT, the `kubernetes` Service's ClusterIP), the container's;
- securityContext: `privileged` (every capability, /proc/sys and /sys writable, no masked
  paths) or the capabilities `add`ed after `drop: [ALL]`; `allowPrivilegeEscalation:
  false` as no_new_privs; `readOnlyRootFilesystem`; `runAsUser`;
- volumes: configMap (files, with `items`), hostPath (`FileOrCreate` creates the file),
  emptyDir (a tmpfs), and the service account token kubelet mounts at
  /var/run/secrets/kubernetes.io/serviceaccount;
- hostNetwork: no network namespace of its own (the caller's, i.e. the node's); else the
  namespace given (what a CNI plugin set up), or one with loopback only;
- probes: `httpGet` on 127.0.0.1 (host network) or the pod's address, polled by the caller.

Not done, as the sandbox cannot or need not: cgroups and resource limits (the guest has no
cgroup setup; `crun --cgroup-manager=disabled`), seccomp profiles (crun has no
RuntimeDefault of its own), image layers (the image is one directory, mounted read-only
in every container: the init container writes nothing to its root).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
# Every capability of Linux 6.1, in number order: what a privileged container gets.
_CAPABILITY_NAMES: Final = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)
ALL_CAPABILITIES: Final = tuple(f"CAP_{name}" for name in _CAPABILITY_NAMES)
_MASKED: Final = (
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
)
_READ_ONLY: Final = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
_VARIABLE: Final = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\$")


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """What the image says about how to run it (its Dockerfile's ENTRYPOINT, ENV)."""

    entrypoint: tuple[str, ...]
    env: Mapping[str, str]


@dataclass
class PodContext:
    """What kubelet knows besides the spec: the node, the ConfigMaps, the account."""

    node_name: str
    config_maps: Mapping[str, Mapping[str, str]]  # name -> data
    token: str = "a-service-account-token"
    ca_crt: str = "-----BEGIN CERTIFICATE-----\n"
    namespace: str = "kube-system"
    pod_name: str = "ipvsproxy-x"
    service_host: str = "10.96.0.1"  # the kubernetes Service, as kubelet injects it
    service_port: str = "443"
    # Where the sandbox keeps what a node has at a hostPath (the guest's /lib/modules).
    host_paths: Mapping[str, str] = field(default_factory=dict)
    # A pod not on the host network joins the network namespace its CNI plugin set up
    # (a path such as /run/netns/NAME); empty: a namespace of its own with loopback only.
    network_namespace: str = ""


def expand(text: str, env: Mapping[str, str]) -> str:
    """kubelet's $(VAR) expansion: known names replaced, unknown ones kept, $$ is $."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VARIABLE.sub(one, text)


@dataclass
class Container:
    """One running container: its crun name and process."""

    name: str
    bundle: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    spec: Mapping[str, Any] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        subprocess.run(["crun", "kill", self.name, str(int(sig))], capture_output=True, check=False)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, grace: float) -> int:
        """SIGTERM, then SIGKILL after `grace` seconds (terminationGracePeriodSeconds)."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait(timeout=30)
        self.remove()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self.remove()

    def remove(self) -> None:
        subprocess.run(["crun", "delete", "--force", self.name], capture_output=True, check=False)


class PodRunner:
    """Bundles for a pod template's containers; see the module docstring."""

    def __init__(
        self,
        template: Mapping[str, Any],
        rootfs: Path,
        image: ImageConfig,
        context: PodContext,
        workdir: Path,
    ) -> None:
        self.spec: Mapping[str, Any] = template["spec"]
        self.rootfs = rootfs
        self.image = image
        self.context = context
        self.workdir = workdir
        self._runs = 0
        self._volumes = self._prepare_volumes()

    # -- volumes

    def _prepare_volumes(self) -> dict[str, dict[str, Any]]:
        """Volume name -> the mount source (a host path) and its kind."""
        base = self.workdir / "volumes"
        base.mkdir(parents=True, exist_ok=True)
        prepared: dict[str, dict[str, Any]] = {}
        for volume in self.spec.get("volumes", []):
            name = volume["name"]
            if "configMap" in volume:
                source = volume["configMap"]
                data = self.context.config_maps.get(source["name"])
                if data is None:
                    raise KeyError(f"volume {name}: no ConfigMap {source['name']}")
                directory = base / name
                directory.mkdir(exist_ok=True)
                items = source.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    (directory / item["path"]).write_text(data[item["key"]])
                prepared[name] = {"source": str(directory), "kind": "bind"}
            elif "hostPath" in volume:
                given = volume["hostPath"]["path"]
                path = Path(self.context.host_paths.get(given, given))
                kind = volume["hostPath"].get("type", "")
                if kind == "FileOrCreate" and not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch(mode=0o600)
                if kind == "Directory" and not path.is_dir():
                    raise FileNotFoundError(f"volume {name}: hostPath {path} is no directory")
                prepared[name] = {"source": str(path), "kind": "bind"}
            elif "emptyDir" in volume:
                prepared[name] = {"source": "tmpfs", "kind": "tmpfs"}
            else:
                raise ValueError(f"volume {name}: unsupported kind {sorted(volume)}")
        account = base / "service-account"
        account.mkdir(exist_ok=True)
        (account / "token").write_text(self.context.token)
        (account / "ca.crt").write_text(self.context.ca_crt)
        (account / "namespace").write_text(self.context.namespace)
        prepared[""] = {"source": str(account), "kind": "bind"}
        return prepared

    # -- one container

    def _env(self, container: Mapping[str, Any]) -> dict[str, str]:
        env = dict(self.image.env)
        env["HOSTNAME"] = self.context.node_name  # host network: the node's name
        env["KUBERNETES_SERVICE_HOST"] = self.context.service_host
        env["KUBERNETES_SERVICE_PORT"] = self.context.service_port
        fields = {
            "spec.nodeName": self.context.node_name,
            "metadata.name": self.context.pod_name,
            "metadata.namespace": self.context.namespace,
        }
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = expand(str(item["value"]), env)
            else:
                env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        return env

    def config(self, container: Mapping[str, Any]) -> dict[str, Any]:
        """The OCI runtime configuration kubelet's runtime would give this container."""
        env = self._env(container)
        argv = [
            expand(a, env)
            for a in [
                *(container.get("command") or self.image.entrypoint),
                *container.get("args", []),
            ]
        ]
        security = container.get("securityContext", {})
        privileged = bool(security.get("privileged"))
        if privileged:
            capabilities = list(ALL_CAPABILITIES)
        else:
            dropped = security.get("capabilities", {}).get("drop", [])
            assert dropped == ["ALL"], "only drop: [ALL] is translated"
            capabilities = [f"CAP_{c}" for c in security.get("capabilities", {}).get("add", [])]
        # Read-only even where the spec allows writing: every container shares the one
        # image directory (module docstring).
        read_only_root = True
        mounts: list[dict[str, Any]] = [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "rw" if privileged else "ro"],
            },
        ]
        seen = {"/proc", "/dev", "/dev/pts", "/dev/shm", "/sys"}
        volume_mounts = list(container.get("volumeMounts", []))
        if self.spec.get("automountServiceAccountToken", True):
            volume_mounts.append({"name": "", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True})
        for mount in volume_mounts:
            volume = self._volumes[mount["name"]]
            options = ["ro" if mount.get("readOnly") else "rw"]
            if volume["kind"] == "tmpfs":
                mounts.append(
                    {
                        "destination": mount["mountPath"],
                        "type": "tmpfs",
                        "source": "tmpfs",
                        "options": ["nosuid", "nodev", "mode=1777", *options],
                    }
                )
            else:
                mounts.append(
                    {
                        "destination": mount["mountPath"],
                        "type": "bind",
                        "source": volume["source"],
                        "options": ["rbind", *options],
                    }
                )
            seen.add(mount["mountPath"])
        linux: dict[str, Any] = {
            # hostNetwork: no network namespace; the pod's own pid, ipc, uts and mounts.
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
            + ([] if self.spec.get("hostNetwork") else [self._network()]),
        }
        if not privileged:
            linux["maskedPaths"] = list(_MASKED)
            linux["readonlyPaths"] = list(_READ_ONLY)
        user = security.get("runAsUser", 0)
        return {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": {"uid": user, "gid": user},
                "args": argv,
                "env": [f"{k}={v}" for k, v in env.items()],
                "cwd": "/",
                "capabilities": {
                    kind: capabilities for kind in ("bounding", "effective", "permitted")
                },
                "noNewPrivileges": not privileged
                and security.get("allowPrivilegeEscalation", True) is False,
            },
            "root": {"path": str(self.rootfs), "readonly": read_only_root},
            "hostname": self.context.node_name,
            "mounts": mounts,
            "linux": linux,
        }

    def _network(self) -> dict[str, str]:
        """The pod's network namespace, as the runtime joins the one CNI prepared."""
        if self.context.network_namespace:
            return {"type": "network", "path": self.context.network_namespace}
        return {"type": "network"}

    def start(self, container: Mapping[str, Any]) -> Container:
        """Start one container (crun run in the background); its log is kept."""
        self._runs += 1
        name = f"{self.context.pod_name}-{container['name']}-{self._runs}"
        bundle = self.workdir / name
        bundle.mkdir(parents=True)
        spec = self.config(container)
        (bundle / "config.json").write_text(json.dumps(spec, indent=1))
        log_path = bundle / "log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                ["crun", "--cgroup-manager=disabled", "run", "--bundle", str(bundle), name],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return Container(name, bundle, process, log_path, spec)

    def run_init_containers(self, timeout: float = 120) -> list[Container]:
        """Each init container in order, to completion; AssertionError if one fails."""
        done = []
        for spec in self.spec.get("initContainers", []):
            container = self.start(spec)
            code = container.wait(timeout)
            container.remove()
            if code != 0:
                raise AssertionError(
                    f"init container {spec['name']} exited {code}:\n{container.log()}"
                )
            done.append(container)
        return done

    def container(self, name: str) -> Mapping[str, Any]:
        (found,) = [c for c in self.spec["containers"] if c["name"] == name]
        return dict(found)

    @property
    def grace(self) -> float:
        return float(self.spec.get("terminationGracePeriodSeconds", 30))


def probe(spec: Mapping[str, Any], timeout: float | None = None, host: str = "127.0.0.1") -> int:
    """An httpGet probe's status code (0 when nothing answers): on the host network, or
    at the pod's address (`host`), as kubelet probes a pod of its own network."""
    get = spec["httpGet"]
    url = f"http://{host}:{get['port']}{get.get('path', '/')}"
    try:
        with urllib.request.urlopen(url, timeout=timeout or spec.get("timeoutSeconds", 1)) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def image_config(rootfs: Path, entrypoint: Sequence[str], env: Mapping[str, str]) -> ImageConfig:
    """The image's run settings; checked against its root filesystem (the entrypoint's
    program must be on the image's PATH)."""
    path = env.get("PATH", "/usr/bin:/bin")
    program = entrypoint[0]
    if not any(os.path.lexists(f"{rootfs}{d}/{program}") for d in path.split(":")):
        raise FileNotFoundError(f"{program} is not on the image's PATH {path}")
    return ImageConfig(tuple(entrypoint), dict(env))


def crun_available() -> bool:
    return shutil.which("crun") is not None
