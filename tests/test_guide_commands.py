"""Every command of the migration guide (README.md, "Migrating from kube-proxy, and back")
and of the kubeadm guide (deploy/README.md) is accounted for: run by a named test (which
this checks holds the command, or runs the guide's block itself), or listed here as one
no test can run, with the reason and what the tests do instead. A command added to a
guide and to neither list fails this test, as does a list entry the guides no longer hold.
"""

from __future__ import annotations

from pathlib import Path

from guide import blocks, inline_commands

ROOT = Path(__file__).resolve().parents[1]
GUIDES = (
    (ROOT / "README.md", "## Migrating from kube-proxy, and back"),
    (ROOT / "deploy/README.md", None),
)
PROGRAMS = ("kubectl", "kubeadm", "ipvsproxy", "kube-proxy", "nft", "ipset", "iptables", "ip")
IMAGE_TEST = "tests/kernel/test_image_kernel.py"

# Blocks a test runs whole, as the guide prints them (found by their lead paragraph):
# (guide, words of the lead) -> (test file, what in it runs the block).
SCRIPTS: dict[tuple[str, str], tuple[str, str]] = {
    ("deploy/README.md", "steering leftovers"): (
        IMAGE_TEST,
        'guide_block(ROOT / "deploy/README.md", "steering leftovers")',
    ),
    ("README.md", "Verifying a node"): (
        IMAGE_TEST,
        'guide_block(ROOT / "README.md", "Verifying a node")',
    ),
}
# Single commands a test runs: command -> (test file, the text in it that runs it).
RUN: dict[str, tuple[str, str]] = {
    "kubectl kustomize deploy/": ("tests/test_deploy.py", '[kubectl(), "kustomize"'),
    "ipvsproxy cleanup": ("tests/kernel/test_cli_kernel.py", 'cli("cleanup")'),
}
# Commands no test here can run: they need a Kubernetes cluster (no test API server
# serves DaemonSets, ConfigMaps or kubectl apply's calls) or kubeadm, or kube-proxy itself.
# What the tests do instead is said beside each.
CLUSTER_ONLY: dict[str, str] = {
    "kubectl apply -k deploy/overlays/replace-kube-proxy": "built and validated by "
    "tests/test_deploy.py; its pod run under crun by " + IMAGE_TEST,
    "kubectl delete -k deploy/": "its effect on a node (the pod stopped, the kernel left "
    "as it is) in " + IMAGE_TEST + "'s rollback step",
    "kubectl apply -k deploy/overlays/restore-kube-proxy": "built by tests/test_deploy.py; "
    "kube-proxy's sync after it built by ipvsproxy_testkit.sandbox.kube_proxy_state in "
    + IMAGE_TEST,
    "kubectl apply -k deploy/overlays/without-kube-proxy": "built and validated by "
    "tests/test_deploy.py (test_without_kube_proxy_overlay_uses_its_own_copy_of_the_kubeconfig)",
    "kubectl -n kube-system get cm kube-proxy -o jsonpath='{.data.kubeconfig\\.conf}' > "
    "deploy/overlays/without-kube-proxy/kubeconfig.conf": "the kubeconfig.conf layout it "
    "copies is the one " + IMAGE_TEST + " mounts",
    "kubectl -n kube-system edit cm kubeadm-config": "kubeadm's configuration: needs a cluster",
    "kubectl -n kube-system delete daemonset kube-proxy": "needs a cluster",
    "kubectl -n kube-system delete configmap kube-proxy": "needs a cluster; the overlay "
    "that no longer reads it is tested as above",
    "kubeadm upgrade apply v1.X.Y --skip-phases=addon/kube-proxy": "kubeadm: needs a cluster",
    "kubeadm upgrade node --skip-phases=addon/kube-proxy": "kubeadm: needs a cluster",
    "kubeadm init --skip-phases=addon/kube-proxy": "kubeadm: needs a cluster",
    "kubeadm init phase addon kube-proxy": "kubeadm: needs a cluster",
    "kubectl delete -k deploy/overlays/without-kube-proxy": "needs a cluster",
    "kubectl debug node/NODE -it --profile=sysadmin --image=IMAGE -- CMD": "needs a cluster; "
    "the commands it runs on a node are run in the sandbox kernel",
    "kubectl apply -k deploy/hollow": "built and validated by tests/test_deploy.py; one of "
    "its pods run under crun from the image by " + IMAGE_TEST,
    "kubectl -n ipvsproxy-hollow scale deployment ipvsproxy-hollow --replicas=N": "needs a "
    "cluster; bench/bench_hollow.py runs many hollow agents as processes",
    "kube-proxy --cleanup": "kube-proxy cannot run here; ipvsproxy takes its flag "
    "(tests/test_kube_proxy_flags.py)",
    "nft delete table ip kube-proxy": "kube-proxy's nftables mode cannot run here",
    "nft delete table ip6 kube-proxy": "kube-proxy's nftables mode cannot run here",
}
# Commands named in the prose, not given to run.
MENTIONS = {
    "kubectl delete -k",
    "kubectl apply",
    "kubeadm upgrade",
    "ipvsproxy run",
    "ipvsproxy verify",
    "kubeadm join",
}
# Blocks that are no commands (a YAML snippet), by their lead's words.
NOT_COMMANDS = {"clientConnection.kubeconfig: /var/lib/ipvsproxy/kubeconfig.conf"}


def test_every_guide_command_is_run_by_a_test_or_listed_as_cluster_only() -> None:
    unaccounted = []
    used: set[str] = set()
    for path, heading in GUIDES:
        name = str(path.relative_to(ROOT))
        for block in blocks(path, heading):
            if any(words in block.lead for words in NOT_COMMANDS):
                continue
            script = [key for key in SCRIPTS if key[0] == name and key[1] in block.lead]
            if script:
                (key,) = script
                used.add(f"script {key}")
                test, evidence = SCRIPTS[key]
                assert evidence in (ROOT / test).read_text(), (key, test)
                continue
            for command in block.commands():
                used.add(command)
                if command in RUN:
                    test, evidence = RUN[command]
                    assert evidence in (ROOT / test).read_text(), (command, test)
                elif command not in CLUSTER_ONLY:
                    unaccounted.append(f"{name}: {command}")
        for command in inline_commands(path, heading, PROGRAMS):
            used.add(command)
            if command not in RUN and command not in CLUSTER_ONLY and command not in MENTIONS:
                unaccounted.append(f"{name} (inline): {command}")
    assert unaccounted == [], "guide commands no test runs and not listed:\n" + "\n".join(
        unaccounted
    )
    listed = {*RUN, *CLUSTER_ONLY, *MENTIONS, *(f"script {key}" for key in SCRIPTS)}
    assert listed - used == set(), "listed commands the guides no longer hold"


def test_the_audit_fails_on_a_command_no_test_runs(tmp_path: Path) -> None:
    guide = tmp_path / "guide.md"
    guide.write_text("Steps:\n\n    kubectl kustomize deploy/\n    ipvsadm -Z\n")
    commands = [c for block in blocks(guide) for c in block.commands()]
    assert commands == ["kubectl kustomize deploy/", "ipvsadm -Z"]
    assert [c for c in commands if c not in RUN and c not in CLUSTER_ONLY] == ["ipvsadm -Z"]
