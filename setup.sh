#!/usr/bin/env bash
# Install what ipvsproxy needs on Debian 12 (run as root) and create the virtualenv .venv.
# Debian packages: user-mode-linux (the test kernel with IPVS); qemu-system-x86 and
# busybox-static (the second test kernel, for iptables' nft backend) and nftables (its
# tests); ipvsadm, ipset, iptables, iproute2 and kmod (used by the proxy and inside the
# test kernels); python3-venv; kubectl; buildah and mmdebstrap (the image, built from the
# Dockerfile without a daemon or a registry) and crun (tests/kernel/test_image_kernel.py
# runs the DaemonSet's containers from it in the test kernel).
set -euo pipefail
cd "$(dirname "$0")"

packages=(python3 python3-venv python3-dev gcc libc6-dev binutils user-mode-linux qemu-system-x86 busybox-static nftables ipvsadm ipset iptables iproute2 kmod procps buildah crun mmdebstrap)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
# kubectl (tests/test_deploy.py builds deploy/ with it; tests/test_testapi_kubectl.py and the
# demo drive the test API server with it):
# Debian's kubernetes-client, unless a kubectl is already installed by other means.
command -v kubectl >/dev/null || missing+=(kubernetes-client)
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,bench]' -e ./testkit
# The qemu test kernel: Debian's generic kernel package, downloaded and unpacked into a cache
# folder (never installed); a no-op once cached.
.venv/bin/python -c 'from ipvsproxy_testkit.sandbox.qemu import prepare_kernel; print("qemu test kernel:", prepare_kernel().release)'
echo "setup done: $(.venv/bin/python --version), $(linux.uml --version 2>/dev/null | head -n1 || echo 'user-mode-linux installed')"
