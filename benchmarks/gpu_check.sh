#!/usr/bin/env bash
# The GPU path in under 5 minutes on one CUDA machine: step costs of every regime on the GPU
# (fp32 and bfloat16 autocast, LSTM-Attention on MR and the image CNN on digits), double
# backpropagation through the LSTM (cuDNN has none: the model falls back to native kernels),
# and a 1-GPU Ray Train fit with NCCL. Results land in benchmarks/results/ and RESULTS.md.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, ../shared/data beside it
#
# It needs a Python with torch (CUDA build) and the rest of pyproject's stack; PYTHON picks it
# (default: .venv/bin/python, else python3). Nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
OUT="${OUT:-/tmp/advorch-gpu-check}"
mkdir -p "$OUT"
"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this check is for a GPU machine"
print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY
"$PY" -c "import advorch" 2>/dev/null || "$PY" -m pip install -q --no-deps --no-build-isolation -e . 

echo "== double backprop through the LSTM on CUDA (native kernels inside twice_differentiable)"
"$PY" - <<'PY'
import torch
from advorch.config import ModelConfig, RegimeConfig
from advorch.pipelines.spec import DatasetSpec, InputSpec
from advorch.trainers.adversarial import build_regime
from advorch.trainers.models import build_model
from advorch.trainers.tasks import Classification

spec = DatasetSpec("gpu", "text", "classification", {"tokens": InputSpec("tokens", "tokens", (None,), "int64")},
                   ["neg", "pos"], {}, {}, vocab_size=100)
model = build_model(ModelConfig(), spec).cuda()
tokens = torch.randint(1, 100, (32, 20), device="cuda")
batch = {"tokens": tokens, "mask": tokens != 0, "label": torch.randint(0, 2, (32,), device="cuda")}
for method in ("double_backprop", "finite_difference"):
    terms = build_regime(RegimeConfig(name="input_gradient", ig_method=method)).backward(
        model, Classification(2), batch)
    print(method, {k: round(float(v), 5) for k, v in terms.items() if k != "scores"})
PY

echo "== step costs on the GPU"
"$PY" benchmarks/step_cost.py --device cuda --rounds 60 --name step_cost_gpu
"$PY" benchmarks/step_cost.py --device cuda --rounds 60 --amp --name step_cost_gpu_amp

echo "== a 1-GPU Ray Train fit (NCCL), digits, FGSM + input gradient"
"$PY" -c "from advorch.cli import app; app()" preprocess images configs/digits.toml --output "$OUT/digits"
RAY_AUTH_MODE=disabled "$PY" - "$OUT" <<'PY'
import sys, time
from advorch.config import load_config
from advorch.trainers.launch import train

out = sys.argv[1]
cfg = load_config("configs/digits.toml", [
    "train.gpus=true", "train.workers=1", "train.epochs=5", "train.amp=true",
    'regime.name="fgsm+input_gradient"', "regime.epsilon=0.1", f'train.storage="{out}/runs"'])
t0 = time.perf_counter()
result = train(cfg, f"{out}/digits", mlflow_uri=f"sqlite:///{out}/mlflow.db")
print(f"1-GPU fit: {time.perf_counter() - t0:.1f} s, test_accuracy {result.metrics['test_accuracy']:.4f}")
PY
