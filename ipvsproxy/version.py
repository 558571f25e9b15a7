"""The build's identity: for --version, the API client's User-Agent and kubernetes_build_info.

The version is the package's. The commit comes from IPVSPROXY_GIT_COMMIT (the image's
build sets it), else from the git checkout the package runs from, else "unknown" (what
client-go reports without one).
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from typing import Final

from ipvsproxy import __version__

__all__ = ["KUBE_PROXY_RELEASE", "BuildInfo", "build_info", "user_agent", "version_text"]

# The kube-proxy release whose flags, metrics and formats ipvsproxy follows.
KUBE_PROXY_RELEASE: Final = "v1.33"
_GOARCH: Final = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


@dataclass(frozen=True, slots=True)
class BuildInfo:
    git_version: str
    """"v" and the package version, e.g. v0.1.0."""
    git_commit: str
    """The full commit, or "unknown"."""
    git_tree_state: str
    """clean, dirty, or "" when unknown."""
    platform: str
    """GOOS/GOARCH spelling, e.g. linux/amd64."""
    python_version: str

    @property
    def major(self) -> str:
        return self.git_version.lstrip("v").split(".")[0]

    @property
    def minor(self) -> str:
        parts = self.git_version.lstrip("v").split(".")
        return parts[1] if len(parts) > 1 else ""


def _git(*args: str) -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        result = subprocess.run(
            ["git", "-C", here, *args], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


@functools.cache
def build_info() -> BuildInfo:
    commit = os.environ.get("IPVSPROXY_GIT_COMMIT", "").strip()
    tree = ""
    if not commit:
        commit = _git("rev-parse", "HEAD")
        if commit:
            tree = "dirty" if _git("status", "--porcelain", "--untracked-files=no") else "clean"
    machine = platform.machine().lower()
    return BuildInfo(
        git_version=f"v{__version__}",
        git_commit=commit or "unknown",
        git_tree_state=tree,
        platform=f"{sys.platform}/{_GOARCH.get(machine, machine)}",
        python_version=platform.python_version(),
    )


def user_agent() -> str:
    """client-go's DefaultKubernetesUserAgent shape: name/version (os/arch) kubernetes/commit,
    the version cut at its first "-" and the commit at 7 characters."""
    info = build_info()
    commit = info.git_commit[:7] if info.git_commit != "unknown" else "unknown"
    return f"ipvsproxy/{info.git_version.split('-')[0]} ({info.platform}) kubernetes/{commit}"


def version_text(*, raw: bool = False) -> str:
    """--version's line (kube-proxy prints "Kubernetes v1.x.y"); raw: every field."""
    info = build_info()
    if not raw:
        return f"ipvsproxy {info.git_version}"
    return (
        f"ipvsproxy {info.git_version} gitCommit={info.git_commit} "
        f"gitTreeState={info.git_tree_state or 'unknown'} platform={info.platform} "
        f"python={info.python_version} kubeProxy={KUBE_PROXY_RELEASE}"
    )
