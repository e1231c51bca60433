#!/usr/bin/env bash
# The README's main command: set up .venv on first use (CPU torch first), then run the demo on the
# shipped small model. Extra arguments go to `python -m vp2p_world.demo` (try --help); relative paths in them
# (--clip, --out, --model) are read from where it is run, as any command's are.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/bootstrap.sh" >&2
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$root/.venv/bin/python" -m vp2p_world.demo "$@"
