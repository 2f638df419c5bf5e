#!/usr/bin/env bash
# One-GPU check of vlmkit, offline, in under 8 minutes; writes bench/results/gpu.md (+ gpu.json).
#
#   bash bench/gpu_check.sh                 # on a machine with one NVIDIA GPU (vlmkit installed from the checkout)
#   bash bench/gpu_check.sh --dry-run       # CPU, tiny configs, same code path -> bench/results/gpu_dryrun.md
#   bash bench/gpu_check.sh --out DIR --checks "env stage2_sdpa"   # other output folder / a subset of checks
#   bash bench/gpu_check.sh --keep          # keep the work folder (models, data, one log per check)
#
# Checks (each in its own process, so one failure or hang does not stop the others):
#   env           GPU, capability, memory, peak bf16 TFLOPS, which optional packages are installed
#   stage2_sdpa   bf16 stage-2 steps, ~0.5B Qwen2 LLM + ViT-L/14-336 CLIP tower (built from configs):
#                 step time, MFU (6*N*tokens), peak memory, packed-vs-padded loss agreement
#   stage2_flash  the same with flash_attention_2 and padding-free packing (varlen), if flash-attn is installed
#   qlora         QLoRA (4-bit nf4 LLM + LoRA) stage-2 steps on CUDA, if bitsandbytes is installed
#   zero3         DeepSpeed ZeRO-3 stage-2 steps, one process, via `accelerate launch` and
#                 accelerate_configs/deepspeed_zero3.yaml, if deepspeed is installed
#   ppo           PPO steps (rollout + update) on the same model: generation/update time split
#   liger         stage-2 steps with --use_liger_kernel, if liger-kernel is installed
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
OUT="bench/results"
CHECKS="env stage2_sdpa stage2_flash qlora zero3 ppo liger"
BUDGET=450  # seconds for all checks; a check never starts with less than 20 s left
CHECK_LIMIT=120  # seconds per check on a GPU (a CPU dry run gets more: it is slow, and often shared)
KEEP=0
CHECKS_GIVEN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --checks) CHECKS="$2"; CHECKS_GIVEN=1; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

WORK="$(mktemp -d -t vlmkit-gpu-check-XXXXXX)"
if [[ $KEEP == 1 ]]; then echo "[gpu_check] keeping $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export VLMKIT_TINY_DIR="$WORK/tiny"
MODE=(--work "$WORK")
if [[ $DRY_RUN == 1 ]]; then
  MODE+=(--device cpu --tiny)
  CHECK_LIMIT=400
  (( BUDGET < 1800 )) && BUDGET=1800
else
  if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA GPU visible to torch; use --dry-run to exercise the checks on CPU" >&2
    exit 1
  fi
fi

START=$SECONDS
echo "[gpu_check] preparing models and data in $WORK"
if ! timeout 120 python bench/gpu_check.py --prepare "${MODE[@]}" > "$WORK/prepare.log" 2>&1; then
  tail -20 "$WORK/prepare.log" >&2
  echo "[gpu_check] preparation failed" >&2
  exit 1
fi

per_check_limit() {  # the time this check may take, from what is left of the budget
  local left=$((BUDGET - (SECONDS - START)))
  local cap=$1
  (( left < cap )) && cap=$left
  echo "$cap"
}

for check in $CHECKS; do
  limit=$(per_check_limit "$CHECK_LIMIT")
  if (( limit < 20 )); then
    echo "[gpu_check] $check: skipped, time budget used up"
    printf '{"status": "skipped", "reason": "time budget used up"}\n' > "$WORK/frag_$check.json"
    continue
  fi
  echo "[gpu_check] $check (limit ${limit}s)"
  if [[ $check == zero3 ]]; then
    if [[ $DRY_RUN == 1 && $CHECKS_GIVEN == 0 ]]; then
      # On CPU `accelerate launch --cpu` drops DeepSpeed, and without --cpu the first run JIT-compiles
      # DeepSpeed's shm op (minutes): ask for it explicitly with --checks zero3.
      printf '{"status": "skipped", "reason": "GPU only in a dry run (add --checks zero3 to try it on CPU)"}\n' \
        > "$WORK/frag_$check.json"
      continue
    fi
    if ! python -c "import deepspeed" > /dev/null 2>&1; then
      printf '{"status": "skipped", "reason": "deepspeed not installed"}\n' > "$WORK/frag_$check.json"
      continue
    fi
    launch=(accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml --num_processes 1
            --main_process_port 29517)
    [[ $DRY_RUN == 1 ]] && launch+=(--mixed_precision no)
    timeout "$limit" "${launch[@]}" bench/gpu_check.py --check zero3 "${MODE[@]}" > "$WORK/$check.log" 2>&1
  else
    timeout "$limit" python bench/gpu_check.py --check "$check" "${MODE[@]}" > "$WORK/$check.log" 2>&1
  fi
  status=$?
  if [[ ! -f "$WORK/frag_$check.json" ]]; then
    reason="exit code $status$([[ $status == 124 ]] && echo ' (timed out)')"
    printf '{"status": "failed", "reason": "%s"}\n' "$reason" > "$WORK/frag_$check.json"
  fi
  if [[ $status != 0 ]]; then
    tail -15 "$WORK/$check.log" | sed "s/^/[gpu_check] $check: /" >&2
  fi
done

python bench/gpu_check.py --report "${MODE[@]}" --out "$OUT"
echo "[gpu_check] done in $((SECONDS - START)) s -> $OUT"
