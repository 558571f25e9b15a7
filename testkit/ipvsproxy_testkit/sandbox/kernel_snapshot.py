"""The kernel state either IPVS-mode proxy writes, as a set of lines, so that two
snapshots (kube-proxy's state, the same after ipvsproxy adopted it, after the rollback)
compare as sets and their differences name the objects that differ."""

from __future__ import annotations

from ipvsproxy_testkit.sandbox.kube_proxy_state import DUMMY, run


def kernel_snapshot(*, backend: str = "legacy") -> set[str]:
    """What the kernel holds that either proxy writes, one line per object, so that two
    snapshots compare as sets: virtual and real servers (`ipvsadm -Sn`), kube-ipvs0's
    addresses, every ipset (its name and type, and its entries; not its random initval),
    the chains of both families (not the built-in ones, which iptables-legacy lists once
    anything loaded their table) and their rules (counters aside), the policy rules
    and the routes of tables other than main and local."""
    lines = {f"ipvs {line}" for line in run(["ipvsadm", "-Sn"]).splitlines()}
    lines |= {
        f"address {line.split()[3]}"
        for line in run(["ip", "-o", "addr", "show", "dev", DUMMY], check=False).splitlines()
    }
    for line in run(["ipset", "save"]).splitlines():
        words = line.split()
        lines.add(f"ipset {' '.join(words[:3])}")
    for version in (4, 6):
        tool = f"{'iptables' if version == 4 else 'ip6tables'}-{backend}-save"
        table = ""
        for line in run([tool]).splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":") and line.split()[1] == "-":  # not a built-in chain
                lines.add(f"ipv{version} {table} chain {line.split()[0][1:]}")
            elif line.startswith("-A"):
                lines.add(f"ipv{version} {table} {line}")
        family = "-4" if version == 4 else "-6"
        for line in run(["ip", family, "rule", "show"]).splitlines():
            lines.add(f"ipv{version} rule {' '.join(line.split())}")
        for line in run(["ip", family, "route", "show", "table", "all"]).splitlines():
            if " table " in line and not any(f" table {t}" in line for t in ("main", "local")):
                lines.add(f"ipv{version} route {' '.join(line.split())}")
    return lines
