"""The Dockerfile, checked without a container engine: parsed as docker parses it."""

from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ipvsproxy.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
BASE = "debian:12-slim"


@pytest.fixture(scope="module")
def instructions() -> list[dict[str, Any]]:
    parser = DockerfileParser(str(ROOT / "Dockerfile"))
    return [i for i in parser.structure if i["instruction"] != "COMMENT"]


def stages(instructions: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    found: list[list[dict[str, Any]]] = []
    for instruction in instructions:
        if instruction["instruction"] == "FROM":
            found.append([])
        found[-1].append(instruction)
    return found


def values(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def test_two_stages_on_the_pinned_slim_debian_base(instructions: list[dict[str, Any]]) -> None:
    froms = [i["value"].split() for i in instructions if i["instruction"] == "FROM"]
    assert froms == [[BASE, "AS", "build"], [BASE]]


def test_every_copied_file_exists(instructions: list[dict[str, Any]]) -> None:
    copied = 0
    for value in values(instructions, "COPY") + values(instructions, "ADD"):
        words = shlex.split(value)
        if any(w.startswith("--from=") for w in words):
            continue
        for source in words[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            copied += 1
    assert copied >= 4  # pyproject.toml, README.md (pyproject's readme), ipvsproxy, the lock


def test_the_image_holds_the_venv_not_the_source(instructions: list[dict[str, Any]]) -> None:
    build, runtime = stages(instructions)
    assert any("pip wheel" in v and "--no-deps" in v for v in values(build, "RUN"))
    # Only the venv crosses into the image: no source, no wheel, no lock, no pip.
    assert values(runtime, "COPY") == ["--from=build /opt/ipvsproxy /opt/ipvsproxy"]
    (install,) = [v for v in values(build, "RUN") if "/wheels/*.whl" in v]
    # The dependencies only as the lock file pins them, the wheel without its own.
    assert "--require-hashes --no-deps" in install and "-r /tmp/requirements.lock" in install
    assert "pip install --no-cache-dir --no-compile --no-deps /wheels/*.whl" in install
    assert "pip uninstall --yes setuptools pip" in install
    # Nothing of a package index for the wheel: Debian's setuptools builds it.
    assert any("--no-build-isolation" in v for v in values(build, "RUN"))


def test_lock_file_pins_every_dependency_with_a_hash() -> None:
    text = (ROOT / "requirements.lock").read_text()
    entries = [e for e in text.replace("\\\n", " ").splitlines() if e and not e.startswith("#")]
    pinned: dict[str, str] = {}
    for entry in entries:
        requirement, *options = entry.split()
        name, _, version = requirement.partition("==")
        assert version, f"not pinned: {entry}"
        assert options and all(o.startswith("--hash=sha256:") and len(o) == 78 for o in options)
        pinned[canonicalize_name(name)] = version
    # Every dependency the project declares is there, at a version it accepts.
    for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} missing from requirements.lock"
        assert requirement.specifier.contains(pinned[name]), (name, pinned[name])
    assert "ipvsproxy" not in pinned


def test_runtime_installs_the_kernel_tools(instructions: list[dict[str, Any]]) -> None:
    _, runtime = stages(instructions)
    (install,) = [v for v in values(runtime, "RUN") if "apt-get install" in v]
    packages = set(install.split("--no-install-recommends", 1)[1].split("&&")[0].split())
    # What the agent runs (ipset, iptables-*-save/-restore, nft), and what inspects it.
    assert {"ipset", "iptables", "nftables", "ipvsadm", "kmod", "conntrack", "python3"} <= packages
    # pip, the venv module and the CA bundle pip needs stay in the build stage.
    assert not packages & {"python3-pip", "python3-venv", "ca-certificates", "python3-setuptools"}


def test_entrypoint_is_the_console_script_running_the_agent(
    instructions: list[dict[str, Any]],
) -> None:
    (entrypoint,) = values(instructions, "ENTRYPOINT")
    argv = json.loads(entrypoint)  # exec form: no shell between the runtime and the agent
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[argv[0]] == "ipvsproxy.cli:main"
    assert argv[1:] == ["run"]
    assert _parser().parse_args(argv[1:]).command == "run"


def test_user_is_stated(instructions: list[dict[str, Any]]) -> None:
    # Root on purpose (see the Dockerfile and deploy/base/daemonset.yaml); said, not implied.
    _, runtime = stages(instructions)
    assert values(runtime, "USER") == ["root"]
