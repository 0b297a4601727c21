#!/usr/bin/env bash
# The GPU checks, in one command (docs/benchmarks.md, "GPU"): the CUDA tests, the whole suite
# with train.device=auto picking the GPU, and the pretraining-step benchmark against
# transformers' VideoMAEForPreTraining on CUDA. Logs and JSON go to ${OUT:-runs/gpu_check}.
# Wheels in .whl/ (packages the GPU machine lacks, e.g. av, kornia) are installed first.
set -o pipefail
OUT=${OUT:-runs/gpu_check}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
[ -d .devshared ] && export TGMAE_SHARED=$PWD/.devshared
{ nvidia-smi -L; $PY -c "import torch, av, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), '| av', av.__version__, '| transformers', transformers.__version__)"; lscpu | grep 'Model name'; } 2>&1 | tee "$OUT/machine.txt"
timeout ${CUDA_TESTS_S:-240} $PY -m pytest -p no:cacheprovider tests/test_cuda.py -rs 2>&1 | tee "$OUT/cuda_tests.log" | tail -25
timeout ${SUITE_S:-300} $PY -m pytest -p no:cacheprovider --timeout 120 --maxfail=15 --deselect tests/test_cuda.py -rf ${SUITE_FILES:-} 2>&1 | tee "$OUT/suite.log" | tail -40
[ "${BENCH_S:-150}" = 0 ] || timeout ${BENCH_S:-150} $PY benchmarks/pretrain_step.py --device cuda --presets base --ratios 0.9,0.6 \
  --precisions bf16,fp32 --batch 8 --steps 10 --json "$OUT/bench_cuda.json" 2>&1 | tee "$OUT/bench.log" | tail -25
