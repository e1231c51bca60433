#!/usr/bin/env bash
# Create or update .venv with what the tests and the demo need: torch (the CPU build unless told
# otherwise), then requirements.txt and requirements-dev.txt. Idempotent: when nothing changed since the
# last complete run it returns at once.
#
# Settings (environment):
#   PYTHON           the interpreter that makes .venv (Python >= 3.10). Default: the first of python3.11
#                    (the tested version), python3, python3.12, python3.13, python3.14, python3.10 that runs
#                    and is new enough. Only read when .venv is made; remove .venv to switch.
#   TORCH_SPEC       the torch requirement (default torch==2.13.0, the tested version). A torch that already
#                    satisfies it is kept: one in .venv, or one the chosen python itself imports (then
#                    .venv is made to see that python's packages: --system-site-packages, or a .pth file
#                    when that python is itself in a venv; VP2P_SYSTEM_TORCH=0 turns that off).
#                    TORCH_SPEC=torch keeps any torch (tested: 2.13.0 and 2.14.1).
#   TORCH_INDEX_URL  a package index to take torch from, next to pip's own (e.g. one of PyTorch's,
#                    https://download.pytorch.org/whl/cu128 for a CUDA GPU). Without it, bootstrap wants a
#                    CPU build: it takes the one pip finds as configured if that is a CPU build (local wheels,
#                    macOS, Windows), else the one on PyTorch's CPU index (https://download.pytorch.org/whl/cpu),
#                    and stops with a message rather than download a CUDA build (several GB).
#                    TORCH_INDEX_URL=https://pypi.org/simple accepts PyPI's build, CUDA on Linux.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
CPU_INDEX=https://download.pytorch.org/whl/cpu
VPY=.venv/bin/python
stamp=.venv/.vp2p-requirements

note() { echo "bootstrap: $*"; }
die() { echo "bootstrap: $*" >&2; exit 1; }

# --- fast path: nothing changed since the last complete run ------------------------------------------------
want="$( { cat requirements.txt requirements-dev.txt; echo "TORCH_SPEC=$TORCH_SPEC"
           echo "TORCH_INDEX_URL=$TORCH_INDEX_URL"; } | cksum)"
if [ -x "$VPY" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

T0=$SECONDS
pip_() { "$VPY" -m pip --disable-pip-version-check "$@"; }

# torch_state PYTHON: prints "<version> <build>" of the torch PYTHON imports; exit 0 if it satisfies
# TORCH_SPEC, 1 if it does not, 2 if there is none (or PYTHON cannot tell)
torch_state() {
    TORCH_SPEC="$TORCH_SPEC" "$1" - 2>/dev/null <<'EOF'
import os, sys
try:
    import torch
except Exception:
    sys.exit(2)
version = str(torch.__version__)
build = "CPU" if torch.version.cuda is None and getattr(torch.version, "hip", None) is None else (
    "CUDA-" + torch.version.cuda if torch.version.cuda else "ROCm-" + torch.version.hip)
print(version, build)
try:
    from pip._vendor.packaging.requirements import Requirement
except Exception:
    try:
        from packaging.requirements import Requirement
    except Exception:
        sys.exit(2)
req = Requirement(os.environ["TORCH_SPEC"])
sys.exit(0 if req.name.lower() == "torch" and req.specifier.contains(version, prereleases=True) else 1)
EOF
}

# --- 1. the interpreter and the venv ---------------------------------------------------------------------
py_version() {  # prints "3.11.7 /real/path/to/python" when $1 runs, has venv + ensurepip, and is >= 3.10
    "$1" - 2>/dev/null <<'EOF'
import sys
sys.stdout.write("%d.%d.%d %s\n" % (sys.version_info[:3] + (sys.executable,)))
if sys.version_info < (3, 10):
    sys.exit(3)
import venv, ensurepip
EOF
}

# a .venv without a Python that runs pip is remade: a first run stopped in its first seconds (before venv's pip was
# in), or its Python removed since (a pyenv version uninstalled); before, every later run failed in it
usable_venv() { [ -x "$VPY" ] && "$VPY" -c 'import pip' >/dev/null 2>&1; }
clear_flag=""
if [ -e .venv ] && ! usable_venv; then
    note ".venv is incomplete (a first run stopped early, or its Python is gone): making it again"
    clear_flag=--clear
fi
if ! usable_venv; then
    if [ -n "${PYTHON:-}" ]; then
        info="$(py_version "$PYTHON")" && rc=0 || rc=$?
        [ -n "$info" ] || die "PYTHON=$PYTHON does not run"
        [ "$rc" = 3 ] && die "PYTHON=$PYTHON is Python ${info%% *}; Video-P2P needs Python >= 3.10"
        [ "$rc" = 0 ] || die "PYTHON=$PYTHON (Python ${info%% *}) lacks the venv module (Debian/Ubuntu: apt install python3-venv)"
    else
        info=""; seen=""
        for cand in python3.11 python3 python3.12 python3.13 python3.14 python3.10; do
            command -v "$cand" >/dev/null 2>&1 || continue
            if out="$(py_version "$cand")"; then info="$out"; break; fi
            # pyenv shims exist for versions that are not active: those print nothing
            [ -n "$out" ] && seen="$seen $cand (Python ${out%% *})"
        done
        [ -n "$info" ] || die "no Python >= 3.10 with the venv module found${seen:+ (found:$seen)}; install one, or set PYTHON=/path/to/python3.x"
    fi
    PY="${info#* }"
    note "first run: making .venv with Python ${info%% *} ($PY)"
    reuse=""
    if [ "${VP2P_SYSTEM_TORCH:-1}" != 0 ] && sys_torch="$(torch_state "$PY")"; then
        note "$PY already has torch ${sys_torch% *} (${sys_torch#* } build), which satisfies $TORCH_SPEC: .venv will see it instead of installing its own (VP2P_SYSTEM_TORCH=0: install its own)"
        # a base interpreter: the standard flag; one inside a venv (e.g. ComfyUI's): --system-site-packages
        # would show the base interpreter's packages, not that venv's, so its site-packages go in a .pth file
        reuse="$("$PY" -c 'import sys; print("flag" if sys.prefix == sys.base_prefix else "pth")')"
    fi
    if [ -z "$reuse" ]; then
        note "this takes a few minutes: torch and about 55 other packages, about 1.4 GB in .venv with the CPU build"
    fi
    if [ "$reuse" = flag ]; then "$PY" -m venv $clear_flag --system-site-packages .venv
    else "$PY" -m venv $clear_flag .venv; fi
    if [ "$reuse" = pth ]; then
        "$PY" -c 'import site; print("\n".join(site.getsitepackages()))' \
            >"$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_vp2p_reused_torch.pth"
    fi
else
    note "updating .venv ($("$VPY" --version 2>&1)): requirements or torch settings changed since its last complete run"
    if [ -n "${PYTHON:-}" ] && [ "$("$PYTHON" --version 2>&1)" != "$("$VPY" --version 2>&1)" ]; then
        note "PYTHON=$PYTHON is not used: .venv exists already (remove .venv to make it with another Python)"
    fi
fi

# pip >= 22.2 for --dry-run --report (Python 3.10's first releases bring an older one)
if ! "$VPY" -c 'import sys, pip; sys.exit(tuple(int(x) for x in pip.__version__.split(".")[:2]) < (22, 2))'; then
    note "upgrading pip in .venv"
    pip_ install --quiet --upgrade "pip>=22.2"
fi

# --- 2. torch --------------------------------------------------------------------------------------------
report=.venv/.vp2p-torch-report.json
probe_log=.venv/.vp2p-torch-probe.log
# probe [pip args]: which torch would pip install for TORCH_SPEC? Reads only its metadata; prints
# "<version> cpu|gpu", where gpu means a CUDA/ROCm build (a +cu/+rocm version, or nvidia-*/cuda-* packages
# it would pull in on this platform)
probe() {
    rm -f "$report"
    pip_ install --dry-run --no-deps --ignore-installed --only-binary=torch --quiet --report "$report" "$@" "$TORCH_SPEC" \
        >>"$probe_log" 2>&1 || return 1
    "$VPY" - "$report" <<'EOF'
import json, sys
from pip._vendor.packaging.requirements import Requirement
found = [i["metadata"] for i in json.load(open(sys.argv[1]))["install"] if i["metadata"]["name"].lower() == "torch"]
if not found:
    sys.exit(1)
meta = found[0]
gpu = meta["version"].partition("+")[2].startswith(("cu", "rocm"))
for line in meta.get("requires_dist") or []:
    req = Requirement(line)
    if req.name.lower().startswith(("nvidia-", "cuda-", "pytorch-triton-rocm")) and (
            req.marker is None or req.marker.evaluate({"extra": ""})):
        gpu = True
print(meta["version"], "gpu" if gpu else "cpu")
EOF
}

index_args=()
if [ -n "$TORCH_INDEX_URL" ]; then index_args=(--extra-index-url "$TORCH_INDEX_URL"); fi
: >"$probe_log"
pick=""
if have="$(torch_state "$VPY")"; then
    if [ -z "$TORCH_INDEX_URL" ]; then
        note "torch ${have% *} (${have#* } build) is there and satisfies $TORCH_SPEC: kept"
        if [ "${have#* }" != CPU ]; then
            note "(not the CPU build: for that one, remove .venv and run this again with VP2P_SYSTEM_TORCH=0)"
        fi
    else
        # an index was asked for: keep this torch only if it is the build that index gives
        pick="$(probe ${index_args[@]+"${index_args[@]}"})" || { cat "$probe_log" >&2; die "pip found no $TORCH_SPEC (see above)"; }
        if [ "${pick% *}" = "${have% *}" ]; then
            note "torch ${have% *} (${have#* } build) is there and is what $TORCH_INDEX_URL gives: kept"
            pick=""
        else
            note "torch ${have% *} is there; with $TORCH_INDEX_URL pip picks ${pick% *} instead"
        fi
    fi
elif [ -n "$TORCH_INDEX_URL" ]; then
    note "looking up $TORCH_SPEC (also on $TORCH_INDEX_URL)"
    pick="$(probe ${index_args[@]+"${index_args[@]}"})" || { cat "$probe_log" >&2; die "pip found no $TORCH_SPEC (see above)"; }
else
    note "looking up $TORCH_SPEC, CPU build"
    pick="$(probe)" || pick=""
    if [ "${pick#* }" != cpu ]; then
        if [ -n "$pick" ]; then
            note "pip's default is torch ${pick% *}, a CUDA build (several GB); trying PyTorch's CPU index ($CPU_INDEX)"
        fi
        index_args=(--extra-index-url "$CPU_INDEX")
        pick="$(probe ${index_args[@]+"${index_args[@]}"} --retries 0 --timeout 20)" || pick=""
    fi
    if [ "${pick#* }" != cpu ]; then
        tail -n 20 "$probe_log" >&2
        die "found no CPU build of $TORCH_SPEC: pip offers ${pick:+torch ${pick% *}, a CUDA build}${pick:-nothing}, and PyTorch's CPU index ($CPU_INDEX) did not answer with one. Set TORCH_INDEX_URL to an index that has one, TORCH_SPEC to another version, or TORCH_INDEX_URL=https://pypi.org/simple to accept PyPI's build (CUDA on Linux, several GB)."
    fi
fi
if [ -n "$pick" ]; then
    note "installing torch ${pick% *} ($([ "${pick#* }" = cpu ] && echo CPU || echo GPU) build)"
    pip_ install --only-binary=torch ${index_args[@]+"${index_args[@]}"} "torch==${pick% *}"
    have="$(torch_state "$VPY")" || die "torch ${pick% *} was installed but $VPY does not import it as $TORCH_SPEC"
    note "torch ${have% *} (${have#* } build) installed"
fi

# --- 3. requirements ---------------------------------------------------------------------------------------
# torch stays as it is: a requirement that asks for torch must take this one
constraint=.venv/.vp2p-torch-constraint.txt
echo "torch==${have% *}" >"$constraint"
note "installing requirements.txt and requirements-dev.txt"
pip_ install -r requirements.txt -r requirements-dev.txt -c "$constraint"
"$VPY" scripts/check_requirements.py || note "warning: requirements files and pyproject.toml disagree (see above)"

echo "$want" >"$stamp"
note "done in $((SECONDS - T0)) s: $("$VPY" --version 2>&1), torch ${have% *} (${have#* } build), .venv $(du -sh .venv 2>/dev/null | cut -f1)"
