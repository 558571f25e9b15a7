#!/usr/bin/env bash
# Set everything up, then run the live demo in the sandbox kernel: a test API server with an
# example cluster, `ipvsproxy run` against it, traffic through the ClusterIPs, and kubectl
# changing the cluster while the demo times how fast the kernel follows (about a minute).
#   ./demo.sh --shell    # then leave a shell in the guest, everything still running
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
exec .venv/bin/python -m ipvsproxy_testkit.sandbox.demo "$@"
