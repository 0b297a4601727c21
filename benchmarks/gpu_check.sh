#!/usr/bin/env bash
# The GPU checks in one command (docs/benchmarks.md, "GPU"; issue 26). Stages, in order:
#   tests     the CUDA tests and the suite with train.device=auto picking the GPU
#   step      ViT-B 16x224 pretraining step vs transformers' VideoMAEForPreTraining (same weights,
#             alternating): ratios 0.9 / 0.75, bf16, batch 32 and 64, torch.compile off and on,
#             fused AdamW; share of the bf16 matmul peak measured in the same run; peak memory;
#             dual masking / activation checkpointing where this tgmae has them
#   maxbatch  the largest batch that fits per preset (base, large, huge) and its clips/s
#   e2e       `tgmae pretrain` on a Kinetics-like set written on the device (tube and TGM masking,
#             data.num_sample 1/2/4 where it exists), data-wait and GPU-busy shares, a torchrun
#             (NCCL) kill and resume, and the K400 cost table (benchmarks/gpu_e2e.py)
#
#   bash benchmarks/gpu_check.sh                         # everything, on the GPU
#   STAGES=step,maxbatch bash benchmarks/gpu_check.sh    # some stages (device time is short)
#   bash benchmarks/gpu_check.sh --device cpu --quick    # the CPU rehearsal: tiny sizes, every stage
#
# Logs and JSON go to ${OUT:-runs/gpu_check}. Wheels in .whl/ (packages the GPU machine lacks, e.g.
# av, kornia) are installed first.
set -o pipefail
DEVICE=cuda QUICK=
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "usage: gpu_check.sh [--device cuda|cpu] [--quick]" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-runs/gpu_check}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
STAGES=${STAGES:-tests,step,maxbatch,e2e}
[ "$DEVICE" = cpu ] && STAGES=${STAGES/tests,/}
has() { case ",$STAGES," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
[ -d .devshared ] && export TGMAE_SHARED=$PWD/.devshared
{ [ "$DEVICE" = cpu ] || nvidia-smi -L
  $PY -c "import torch, av, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU', '| av', av.__version__, '| transformers', transformers.__version__)"
  lscpu | grep 'Model name'; nproc; } 2>&1 | tee "$OUT/machine.txt"

if has tests; then
  timeout ${CUDA_TESTS_S:-240} $PY -m pytest -p no:cacheprovider tests/test_cuda.py -rs 2>&1 | tee "$OUT/cuda_tests.log" | tail -25
  timeout ${SUITE_S:-300} $PY -m pytest -p no:cacheprovider --timeout 120 --maxfail=15 --deselect tests/test_cuda.py -rf ${SUITE_FILES:-} 2>&1 | tee "$OUT/suite.log" | tail -40
fi

if has step; then
  if [ -n "$QUICK" ]; then SIZES="--presets tiny --ratios 0.9 --steps 2"; BATCHES="2"; COMPILES="off"
  else SIZES="--presets base --ratios 0.9,0.75 --steps 10"; BATCHES="32 64"; COMPILES="off model"; fi
  EXTRA=""
  help=$($PY benchmarks/pretrain_step.py --help 2>&1)
  for b in $BATCHES; do for c in $COMPILES; do
    timeout ${STEP_S:-240} $PY benchmarks/pretrain_step.py --device "$DEVICE" $SIZES --precisions bf16 \
      --batch "$b" --compile "$c" --json "$OUT/step_b${b}_compile_${c}.json" 2>&1 | tee "$OUT/step_b${b}_${c}.log" | tail -4
  done; done
  # dual masking and activation checkpointing, where this tgmae has them (issue 25)
  for opt in "--decoder-ratio 0.5" "--grad-checkpoint"; do
    case "$help" in *"${opt%% *}"*)
      b=${BATCHES##* }; tag=$(echo "${opt%% *}" | tr -d -)
      timeout ${STEP_S:-240} $PY benchmarks/pretrain_step.py --device "$DEVICE" $SIZES --precisions bf16 \
        --batch "$b" $opt --json "$OUT/step_b${b}_${tag}.json" 2>&1 | tee "$OUT/step_b${b}_${tag}.log" | tail -3 ;;
    esac
  done
fi

if has maxbatch; then
  if [ -n "$QUICK" ]; then MB="--quick"; else MB="--presets base,large,huge"; fi
  timeout ${MAXBATCH_S:-240} $PY benchmarks/max_batch.py --device "$DEVICE" $MB --json "$OUT/max_batch.json" 2>&1 | tee "$OUT/max_batch.log" | tail -8
fi

if has e2e; then
  timeout ${E2E_S:-420} $PY benchmarks/gpu_e2e.py --device "$DEVICE" ${QUICK:+--quick} --out "$OUT/e2e" 2>&1 | tee "$OUT/e2e.log" | tail -20
fi
