#!/usr/bin/env bash
# Set everything up, then run the demo: boot the sandbox kernel, program an example cluster
# with `ipvsproxy once`, print `ipvsadm -Ln` and where 40 requests to a ClusterIP landed.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
exec .venv/bin/python -m ipvsproxy.sandbox.demo "$@"
