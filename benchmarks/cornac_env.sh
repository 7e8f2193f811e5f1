#!/usr/bin/env bash
# Build the benchmark-only environment for the Cornac 3.0.1 side-by-side
# (issue 19): benchmarks/.venv-cornac with cornac==3.0.1, numpy, scipy,
# pyarrow and the CPU build of torch==2.13.0 (Cornac's VBPR and AMR train
# with PyTorch: cornac/models/{vbpr,amr}/requirements.txt say torch>=0.4.1).
# Cornac is never a dependency of advorch; it lives only in this venv.
#
# torch is pinned to exactly 2.13.0 through a constraints file: that release
# is the +cpu wheel found on local disk; any other torch spec would pull a
# multi-GB CUDA build.
#
# Idempotent: when the venv already holds these exact versions it does nothing.
# Usage: bash benchmarks/cornac_env.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-cornac"
PY="${PYTHON:-python3}"
CORNAC_VERSION="3.0.1"
TORCH_VERSION="2.13.0"

check() {
  [ -x "$VENV/bin/python" ] || return 1
  "$VENV/bin/python" - "$CORNAC_VERSION" "$TORCH_VERSION" <<'PYEOF' >/dev/null 2>&1
import sys
import cornac, numpy, scipy, pyarrow, torch
assert cornac.__version__ == sys.argv[1], cornac.__version__
assert torch.__version__.split("+")[0] == sys.argv[2], torch.__version__
assert not torch.version.cuda, "CUDA build of torch installed"
from cornac.models import VBPR, AMR  # noqa: F401
from cornac.data import ImageModality  # noqa: F401
PYEOF
}

if check; then
  echo "benchmarks/.venv-cornac is complete (cornac $CORNAC_VERSION, torch $TORCH_VERSION); nothing to do"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi

CONSTRAINTS="$VENV/constraints.txt"
cat > "$CONSTRAINTS" <<CEOF
torch==$TORCH_VERSION
cornac==$CORNAC_VERSION
CEOF

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q -c "$CONSTRAINTS" \
  "cornac==$CORNAC_VERSION" "torch==$TORCH_VERSION" numpy scipy pyarrow tqdm

if ! check; then
  echo "benchmarks/.venv-cornac: install finished but the check failed:" >&2
  "$VENV/bin/python" -c "import cornac, torch; print('cornac', cornac.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)" >&2 || true
  exit 1
fi
"$VENV/bin/python" - <<'PYEOF'
import cornac, numpy, scipy, pyarrow, torch
print("benchmarks/.venv-cornac ready: cornac", cornac.__version__, "| torch", torch.__version__,
      "| numpy", numpy.__version__, "| scipy", scipy.__version__, "| pyarrow", pyarrow.__version__)
PYEOF
