# ipvsproxy's image: the agent and the kernel tools it drives, on Debian 12.
#   docker build -t ipvsproxy:0.1.0 --build-arg IPVSPROXY_GIT_COMMIT=$(git rev-parse HEAD) .
#   (deploy/ expects this name and tag)
# or, with docker, podman or buildah, whichever the machine has, cached by content and
# working behind a TLS-intercepting proxy:
#   python -m ipvsproxy_testkit.image build
# Checked without a container engine by tests/test_dockerfile.py.

# Stage 1: the project's wheel, built from this source tree with Debian's setuptools
# (nothing is fetched from a package index for it), then the venv the image runs: every
# dependency at the version and with the file hash requirements.lock records (pip refuses
# anything else), then the wheel alone. Built here, copied into stage 2: pip, setuptools,
# python3-venv and the CA bundle pip needs never reach the image.
FROM debian:12-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-pip python3-setuptools python3-wheel python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ipvsproxy ./ipvsproxy
RUN python3 -m pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .
# Pruned from the installed packages, a listed path each (tests/test_image_prune.py runs
# the agent's imports and requests and checks that nothing it loads is among them):
#   kubernetes/aio: the client's asyncio copy of every generated API and model; aiohttp
#     and its family, which only it imports, are left out of requirements.lock;
#   kubernetes/client/api and the modules of kubernetes/client/models: the generated typed
#     APIs and models. kubernetes.client loads them lazily, by name, when one is used; the
#     agent sends its GETs through ApiClient and reads the JSON itself, so none is ever
#     loaded (models/__init__.py stays: ApiClient imports the package);
#   pydantic/v1: pydantic 1's API, which only code written for pydantic 1 imports.
# Bytecode: compiled once here, checked against nothing at import (the image is read-only,
# and the copy into stage 2 must not make it look stale).
COPY requirements.lock /tmp/requirements.lock
RUN python3 -m venv /opt/ipvsproxy \
    && /opt/ipvsproxy/bin/pip install --no-cache-dir --no-compile --require-hashes --no-deps \
        -r /tmp/requirements.lock \
    && /opt/ipvsproxy/bin/pip install --no-cache-dir --no-compile --no-deps /wheels/*.whl \
    && /opt/ipvsproxy/bin/pip uninstall --yes setuptools pip \
    && rm -rf /opt/ipvsproxy/lib/python3.11/site-packages/kubernetes/aio \
    && rm -rf /opt/ipvsproxy/lib/python3.11/site-packages/kubernetes/client/api \
    && find /opt/ipvsproxy/lib/python3.11/site-packages/kubernetes/client/models \
        -mindepth 1 -not -name __init__.py -delete \
    && rm -rf /opt/ipvsproxy/lib/python3.11/site-packages/pydantic/v1 \
    && python3 -m compileall -q --invalidation-mode unchecked-hash /opt/ipvsproxy/lib

# Stage 2: the interpreter, the kernel tools and the venv, nothing of the source tree.
# ipset, iptables (Debian's holds both the legacy and the nft backend; ipvsproxy picks
# the one the node uses) and nftables' nft, which the agent runs; ipvsadm and conntrack to
# inspect the kernel state, kmod (lsmod, modinfo) to inspect the node's modules.
FROM debian:12-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 ipset iptables nftables ipvsadm conntrack kmod \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/ipvsproxy /opt/ipvsproxy
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
