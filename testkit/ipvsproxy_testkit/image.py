"""Build ipvsproxy's image from its Dockerfile, unchanged, with whatever the machine has.

    python -m ipvsproxy_testkit.image build     # build (or find) the image; print its name
    python -m ipvsproxy_testkit.image rootfs    # ...and print its root filesystem's directory
    python -m ipvsproxy_testkit.image info      # ...its root filesystem, entrypoint and env (JSON)
    python -m ipvsproxy_testkit.image lock      # rewrite requirements.lock (pins and hashes)
    python -m ipvsproxy_testkit.image sizes     # ...what each part of it costs (MB, on disk)

- Builder: docker when its daemon answers, else podman, else buildah (Debian: `apt-get
  install buildah`); podman and buildah with the vfs storage driver and chroot isolation,
  which need no daemon, no user namespaces and no overlay support.
- Base: `debian:12-slim` is pulled; when it cannot be (no registry access), an equivalent
  is made from Debian's packages with mmdebstrap (minbase, ca-certificates, no docs or
  locales, as the slim image) and stored under that name.
- TLS-intercepting proxies: RUN steps see the host's CA bundle and a pip configuration
  naming it (podman and buildah mount them; the Dockerfile is not changed), so pip inside
  the build trusts what the host's pip trusts. docker cannot mount into RUN steps: behind
  such a proxy, give its daemon the CA instead.
- Cache by content: the image is also tagged with a digest of the Dockerfile, the lock
  file and every file the Dockerfile copies; an unchanged tree is found, not rebuilt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
BASE: Final = "docker.io/library/debian:12-slim"
HOST_CA: Final = Path("/etc/ssl/certs/ca-certificates.crt")
# What the Dockerfile copies from the tree, besides itself and the lock file.
SOURCES: Final = ("pyproject.toml", "README.md", "ipvsproxy")
DEBIAN_SOURCES: Final = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# debian:12-slim's dpkg settings (/etc/dpkg/dpkg.cfg.d/docker): no documentation, manual
# pages or translations.
SLIM_DPKG: Final = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)


SITE_PACKAGES: Final = "/opt/ipvsproxy/lib/python3.11/site-packages"
_PRUNED_PATH: Final = re.compile(re.escape(SITE_PACKAGES) + r"/(\S+)")


def pruned(root: Path = ROOT) -> tuple[str, ...]:
    """The paths under site-packages that the Dockerfile removes after installing."""
    found: list[str] = []
    for line in (root / "Dockerfile").read_text().splitlines():
        if "rm -rf " in line:
            found.extend(_PRUNED_PATH.findall(line.split("rm -rf ", 1)[1]))
    return tuple(found)


class ImageError(RuntimeError):
    """The image cannot be built here; the message says why and what to install."""


def _run(argv: Sequence[str], *, quiet: bool = False, timeout: float = 1800) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=timeout)
    if done.returncode != 0:
        raise ImageError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    if not quiet and done.stderr:
        sys.stderr.write(done.stderr[-2000:])
    return done.stdout


def version(root: Path = ROOT) -> str:
    return str(tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"])


def _files(root: Path) -> Iterator[Path]:
    yield root / "Dockerfile"
    yield root / "requirements.lock"
    for name in SOURCES:
        path = root / name
        if path.is_dir():
            yield from sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            )
        else:
            yield path


def source_digest(root: Path = ROOT) -> str:
    """A digest of everything the build reads from the tree (names and contents)."""
    digest = hashlib.sha256()
    for path in _files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Builder:
    """A container tool and the options it needs on this machine."""

    tool: str
    global_options: tuple[str, ...] = ()

    @property
    def mounts_into_runs(self) -> bool:
        return self.tool != "docker"

    def cmd(self, *args: str) -> list[str]:
        return [self.tool, *self.global_options, *args]

    def has_image(self, name: str) -> bool:
        if self.tool == "docker":
            argv = self.cmd("image", "inspect", name)
        else:
            argv = self.cmd("inspect", "--type", "image", name)
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def find_builder() -> Builder:
    """docker with a running daemon, else podman, else buildah."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True).returncode == 0:
        return Builder("docker")
    for tool in ("podman", "buildah"):
        if shutil.which(tool):
            return Builder(tool, ("--storage-driver", "vfs"))
    raise ImageError(
        "no container builder: start docker's daemon, or install podman or buildah "
        "(on Debian: apt-get install buildah crun uidmap, and mmdebstrap when "
        "debian:12-slim cannot be pulled)"
    )


def ensure_base(builder: Builder) -> None:
    """debian:12-slim in local storage: pulled, else made from Debian's packages."""
    if builder.has_image(BASE):
        return
    pulled = subprocess.run(
        builder.cmd("pull", BASE), capture_output=True, text=True, check=False, timeout=300
    )
    if pulled.returncode == 0:
        return
    if builder.tool == "docker" or not shutil.which("mmdebstrap"):
        raise ImageError(
            f"cannot pull {BASE} ({pulled.stderr.strip()[-300:]}) and cannot make it: "
            "install mmdebstrap (and buildah or podman)"
        )
    with tempfile.TemporaryDirectory(prefix="ipvsproxy-base-") as scratch:
        tarball = Path(scratch) / "base.tar"
        _run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--include=ca-certificates",
                *(f"--dpkgopt={option}" for option in SLIM_DPKG),
                "bookworm",
                str(tarball),
                *DEBIAN_SOURCES,
            ],
            quiet=True,
        )
        tool = Builder("buildah", builder.global_options)
        if builder.tool != "buildah" and not shutil.which("buildah"):
            # podman imports a root filesystem tarball as an image directly.
            _run(builder.cmd("import", str(tarball), BASE), quiet=True)
            return
        container = _run(tool.cmd("from", "scratch"), quiet=True).strip()
        try:
            _run(tool.cmd("add", container, str(tarball), "/"), quiet=True)
            _run(tool.cmd("commit", "-q", container, BASE), quiet=True)
        finally:
            subprocess.run(tool.cmd("rm", container), capture_output=True, check=False)


def _pip_configuration(directory: Path) -> Path:
    path = directory / "pip.conf"
    path.write_text("[global]\ncert = /run/hostca.crt\n")
    return path


def build(root: Path = ROOT, *, builder: Builder | None = None) -> str:
    """The image built from `root` (or found, when the tree is unchanged); its name."""
    builder = builder or find_builder()
    cached = f"localhost/ipvsproxy:src-{source_digest(root)[:16]}"
    if builder.has_image(cached):
        return cached
    ensure_base(builder)
    tags = ["-t", f"ipvsproxy:{version(root)}", "-t", cached]
    with tempfile.TemporaryDirectory(prefix="ipvsproxy-build-") as scratch:
        if builder.tool == "docker":
            argv = builder.cmd("build", *tags, str(root))
        else:
            mounts: list[str] = []
            if HOST_CA.is_file():
                pip_conf = _pip_configuration(Path(scratch))
                mounts = [
                    "-v",
                    f"{pip_conf}:/etc/pip.conf:ro",
                    "-v",
                    f"{HOST_CA}:/run/hostca.crt:ro",
                ]
            verb = ("bud",) if builder.tool == "buildah" else ("build",)
            argv = builder.cmd(
                *verb, "--isolation", "chroot", "--pull=false", *mounts, *tags, str(root)
            )
        _run(argv, quiet=True)
    _forget_older(builder, cached)
    return cached


def _forget_older(builder: Builder, current: str) -> None:
    """Remove earlier content-tagged builds and the working containers kept for their root
    filesystems (vfs storage keeps a full copy per layer: a few hundred MB each)."""
    if builder.tool == "docker":
        return
    containers = subprocess.run(
        builder.cmd("ps", "--all", "--format", "{{.Names}}")
        if builder.tool == "podman"
        else builder.cmd("containers", "--format", "{{.ContainerName}}"),
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    keep = "ipvsproxy-rootfs-" + current.rsplit(":", 1)[-1]
    for name in containers:
        if name.startswith("ipvsproxy-rootfs-src-") and name != keep:
            subprocess.run(builder.cmd("rm", name), capture_output=True, check=False)
    listed = subprocess.run(
        builder.cmd("images", "--format", "{{.Name}}:{{.Tag}}"),
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    for image in listed:
        if image.startswith("localhost/ipvsproxy:src-") and image != current:
            subprocess.run(builder.cmd("rmi", image), capture_output=True, check=False)


def image_size(name: str, builder: Builder | None = None) -> str:
    """The image's (uncompressed) size, as the builder prints it."""
    builder = builder or find_builder()
    if builder.tool == "docker":
        total = int(_run(builder.cmd("image", "inspect", "-f", "{{.Size}}", name), quiet=True))
        return f"{total / 1e6:.0f} MB"
    wanted = name if "/" in name else f"localhost/{name}"
    for line in _run(
        builder.cmd("images", "--format", "{{.Name}}:{{.Tag}} {{.Size}}"), quiet=True
    ).splitlines():
        image, _, size = line.partition(" ")
        if image == wanted:
            return size.strip()
    raise ImageError(f"{name}: not among the builder's images")


def rootfs(name: str, builder: Builder | None = None) -> Path:
    """The image's root filesystem as a directory (a working container kept for it)."""
    builder = builder or find_builder()
    if builder.tool == "docker":
        raise ImageError("rootfs needs podman or buildah (docker keeps no mountable tree)")
    container = "ipvsproxy-rootfs-" + name.rsplit(":", 1)[-1]
    tool = Builder("buildah", builder.global_options) if shutil.which("buildah") else builder
    existing = subprocess.run(
        tool.cmd("inspect", "--type", "container", container), capture_output=True, check=False
    )
    if existing.returncode != 0:
        _run(tool.cmd("from", "--pull=false", "--name", container, name), quiet=True)
    return Path(_run(tool.cmd("mount", container), quiet=True).strip())


def image_info(name: str, builder: Builder | None = None) -> dict[str, object]:
    """What a runtime needs to run the image: its root filesystem, entrypoint and env."""
    builder = builder or find_builder()
    if builder.tool == "docker":
        raise ImageError("image_info needs podman or buildah")
    tool = Builder("buildah", builder.global_options) if shutil.which("buildah") else builder
    data = json.loads(_run(tool.cmd("inspect", "--type", "image", name), quiet=True))
    config = (data[0] if isinstance(data, list) else data)["OCIv1"]["config"]
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    return {
        "name": name,
        "rootfs": str(rootfs(name, builder)),
        "entrypoint": list(config.get("Entrypoint") or []),
        "env": env,
    }


def _disk_usage(path: Path) -> int:
    """Bytes allocated to a tree (as du counts them), not following symbolic links."""
    if not path.exists():
        return 0
    total = path.lstat().st_blocks * 512
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for entry in (*dirnames, *filenames):
                total += os.lstat(os.path.join(dirpath, entry)).st_blocks * 512
    return total


def sizes(name: str, builder: Builder | None = None) -> list[tuple[str, int]]:
    """What each part of the image costs on disk: the base image, the Debian packages
    added to it, Python's standard library, each installed package, the bytecode."""
    builder = builder or find_builder()
    tree = rootfs(name, builder)
    base = rootfs(BASE, builder)
    site = tree / SITE_PACKAGES.lstrip("/")
    added = sum(_disk_usage(tree / d) - _disk_usage(base / d) for d in ("usr", "etc", "var"))
    parts: list[tuple[str, int]] = [
        ("image, total", _disk_usage(tree)),
        ("base image (debian:12-slim)", _disk_usage(base)),
        ("Debian packages added (/usr, /etc, /var less the base's)", added),
        ("  of which Python's standard library", _disk_usage(tree / "usr/lib/python3.11")),
        ("venv (/opt/ipvsproxy)", _disk_usage(tree / "opt")),
    ]
    packages = sorted(
        ((f"  {p.name}", _disk_usage(p)) for p in site.iterdir() if p.is_dir()),
        key=lambda item: -item[1],
    )
    parts.extend(item for item in packages if item[1] >= 500_000)
    parts.append(("  (smaller packages)", sum(b for _, b in packages if b < 500_000)))
    kubernetes = site / "kubernetes"
    for sub in ("client/api", "client/models"):
        parts.append((f"    kubernetes/{sub}", _disk_usage(kubernetes / sub)))
    bytecode = sum(_disk_usage(p) for p in site.rglob("__pycache__"))
    parts.append(("  bytecode in the venv (__pycache__, counted above too)", bytecode))
    return parts


def lock(root: Path = ROOT) -> str:
    """requirements.lock: every dependency of the project, resolved from the package index
    for this Python (the image's: CPython 3.11, linux x86_64), pinned with its file's hash."""
    with tempfile.TemporaryDirectory(prefix="ipvsproxy-lock-") as scratch:
        report = Path(scratch) / "report.json"
        config = Path(scratch) / "pip.conf"
        config.write_text(f"[global]\ncert = {HOST_CA}\n" if HOST_CA.is_file() else "")
        # Only the index: local wheel folders or constraints of this machine must not
        # decide what the image installs.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = str(config)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--report",
                str(report),
                str(root),
            ],
            check=True,
            env=env,
            timeout=600,
        )
        installs = json.loads(report.read_text())["install"]
    lines = [
        "# The image's Python dependencies: exact versions and file hashes (pip --require-hashes).",
        "# Regenerate with: python -m ipvsproxy_testkit.image lock",
        "# Resolved for CPython 3.11 on linux x86_64 (Debian 12's python3, as in the image).",
    ]
    for item in sorted(installs, key=lambda i: str(i["metadata"]["name"]).lower()):
        name, pinned = item["metadata"]["name"], item["metadata"]["version"]
        if name == "ipvsproxy":
            continue
        hashes = item["download_info"].get("archive_info", {}).get("hashes", {})
        if "sha256" not in hashes:
            raise ImageError(f"{name} {pinned}: the index gave no sha256")
        lines.append(f"{name}=={pinned} \\\n    --hash=sha256:{hashes['sha256']}")
    text = "\n".join(lines) + "\n"
    (root / "requirements.lock").write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ipvsproxy_testkit.image")
    parser.add_argument("command", choices=("build", "rootfs", "info", "lock", "size", "sizes"))
    args = parser.parse_args(argv)
    try:
        if args.command == "lock":
            lock()
            print(ROOT / "requirements.lock")
            return 0
        name = build()
        if args.command == "rootfs":
            print(rootfs(name))
        elif args.command == "info":
            print(json.dumps(image_info(name)))
        elif args.command == "size":
            print(f"{name} {image_size(name)}")
        elif args.command == "sizes":
            print(f"{name} ({image_size(name)} as the builder counts it)")
            for part, size in sizes(name):
                print(f"{size / 1e6:8.1f} MB  {part}")
        else:
            print(name)
    except ImageError as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
