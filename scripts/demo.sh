#!/usr/bin/env bash
# The README's main command: set up .venv on first use (CPU torch first), then run the demo on the
# shipped small model. Extra arguments go to `python -m vp2p_world.demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh >&2
exec .venv/bin/python -m vp2p_world.demo "$@"
