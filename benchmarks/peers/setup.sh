#!/usr/bin/env bash
# Create the peers' virtual environments for benchmarks/bench_peers.py.
#
#   benchmarks/peers/setup.sh [xinference|litellm|all]
#
# Each peer gets its own venv under the repository root, because their pins
# conflict with turnout's: .venv-bench-xinference and .venv-bench-litellm.
# torch is pinned to the local 2.13.0 CPU build first (never a CUDA wheel), and
# torchvision, which xinference pulls in but does not need for text models, is
# removed again. Logs go to benchmarks/results/peers-setup-<peer>.log.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
LOGS="$ROOT/benchmarks/results"
mkdir -p "$LOGS"
which="${1:-all}"
PY="${PYTHON:-python3}"

setup_xinference() {
  local venv="$ROOT/.venv-bench-xinference"
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # CPU torch first: xinference[transformers] would otherwise resolve a CUDA build.
  "$venv/bin/pip" install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    || "$venv/bin/pip" install torch==2.13.0
  "$venv/bin/pip" install "xinference[transformers]" "torch==2.13.0"
  "$venv/bin/pip" uninstall -y torchvision || true
  "$venv/bin/python" -c "import xinference, torch; print('xinference', xinference.__version__, 'torch', torch.__version__)"
}

setup_litellm() {
  local venv="$ROOT/.venv-bench-litellm"
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install "litellm[proxy]"
  "$venv/bin/python" -c "import importlib.metadata as m; print('litellm', m.version('litellm'))"
}

case "$which" in
  xinference) setup_xinference 2>&1 | tee "$LOGS/peers-setup-xinference.log" ;;
  litellm) setup_litellm 2>&1 | tee "$LOGS/peers-setup-litellm.log" ;;
  all)
    setup_litellm 2>&1 | tee "$LOGS/peers-setup-litellm.log"
    setup_xinference 2>&1 | tee "$LOGS/peers-setup-xinference.log"
    ;;
  *) echo "usage: $0 [xinference|litellm|all]" >&2; exit 2 ;;
esac
