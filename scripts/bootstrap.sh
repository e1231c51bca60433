#!/usr/bin/env bash
# Create .venv (idempotent) with what the tests and the demo need, CPU only.
# torch==2.13.0 goes in first: a CPU wheel of it lies on this kind of machine, and anything that asked
# for torch without it would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv with $($PY --version 2>&1)"
    "$PY" -m venv .venv
fi

stamp=.venv/.vp2p-requirements
want="$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1) torch==2.13.0"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "bootstrap: installing torch==2.13.0, then requirements.txt and requirements-dev.txt"
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
echo "$want" > "$stamp"
