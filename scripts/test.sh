#!/usr/bin/env bash
# Bootstrap .venv, then run the whole test suite (CPU, no network, no hub weights).
# tests/integration/test_comfyui.py runs only when COMFYUI_DIR points at a ComfyUI checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q tests "$@"
