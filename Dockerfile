# ipvsproxy's image: the agent and the kernel tools it drives, on Debian 12.
#   docker build -t ipvsproxy:0.1.0 --build-arg IPVSPROXY_GIT_COMMIT=$(git rev-parse HEAD) .
#   (deploy/ expects this name and tag)
# or, with docker, podman or buildah, whichever the machine has, cached by content and
# working behind a TLS-intercepting proxy:
#   python -m ipvsproxy_testkit.image build
# Checked without a container engine by tests/test_dockerfile.py.

# Stage 1: build the project's wheel from this source tree, with Debian's setuptools
# (nothing is fetched from a package index here).
FROM debian:12-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python3-setuptools python3-wheel \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ipvsproxy ./ipvsproxy
RUN python3 -m pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# Stage 2: the tools, the pinned dependencies and the wheel, nothing of the source tree.
# ipset, iptables (Debian's holds both the legacy and the nft backend; ipvsproxy picks
# the one the node uses), ipvsadm and conntrack for the kernel state and for inspecting
# it; kmod (lsmod, modinfo) and iproute2 (ip addr show kube-ipvs0) for operators.
FROM debian:12-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv ipset iptables ipvsadm conntrack kmod iproute2 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
# Every dependency at the version and with the file hash requirements.lock records (pip
# refuses anything else), then the wheel alone; pip and setuptools leave the image after.
# Pruned from the installed packages: what the agent never imports, a listed path each
# (tests/test_image_prune.py checks that every kubernetes module the agent loads survives):
#   kubernetes/aio: the client's asyncio copy of every generated API and model, 68 MB;
#   the agent reaches the API server through the synchronous kubernetes.client only.
COPY requirements.lock /tmp/requirements.lock
COPY --from=build /wheels /tmp/wheels
RUN python3 -m venv /opt/ipvsproxy \
    && /opt/ipvsproxy/bin/pip install --no-cache-dir --require-hashes --no-deps \
        -r /tmp/requirements.lock \
    && /opt/ipvsproxy/bin/pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
    && /opt/ipvsproxy/bin/pip uninstall --yes setuptools pip \
    && rm -rf /opt/ipvsproxy/lib/python3.11/site-packages/kubernetes/aio \
    && rm -rf /tmp/wheels /tmp/requirements.lock
ENV PATH=/opt/ipvsproxy/bin:$PATH PYTHONDONTWRITEBYTECODE=1
# The build's commit, for --version, the User-Agent and kubernetes_build_info:
#   docker build --build-arg IPVSPROXY_GIT_COMMIT=$(git rev-parse HEAD) ...
ARG IPVSPROXY_GIT_COMMIT=""
ENV IPVSPROXY_GIT_COMMIT=$IPVSPROXY_GIT_COMMIT
# Root, with the DaemonSet dropping every capability but NET_ADMIN and NET_RAW: iptables
# and ipset run as child processes, and a non-root process loses its capabilities when it
# executes them (Kubernetes cannot grant ambient capabilities); /run/xtables.lock, shared
# with the host, is root's with mode 0600.
USER root
ENTRYPOINT ["ipvsproxy", "run"]
