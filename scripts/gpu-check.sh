#!/usr/bin/env bash
# Prove the GPU path in one go, where a GPU is lent (about 10 minutes on one GPU), and write one
# markdown table of what ran, what passed and how long it took.
#
#   scripts/gpu-check.sh [--dry-run] [--out FILE] [--budget SECONDS]
#
#   --dry-run        everything that can run without a GPU, on the CPU and at small sizes (what
#                    CI runs, so the script cannot rot unseen): the same steps, the CPU as device
#   --out FILE       the markdown table (default gpu-check.md)
#   --budget SECONDS stop starting new steps after this many seconds (default 540)
#
# The steps, in order (each a row; a step that cannot apply here is "skipped" with the reason):
#   1. doctor      python -m drac_algo.doctor --bundle test/container/model (driver, CUDA, a
#                  convolution per GPU, every route of the bundle and its agreement)
#   2. gpu tests   pytest -m gpu (test/test_gpu_path.py: CUDA vs CPU float32 masks, process.py
#                  on CUDA, one training epoch per recipe with autocast and channels-last)
#   3. libraries   scripts/loaded_libraries.py: process.py on the container fixtures at
#                  precision auto and fp32, then which installed shared libraries the process
#                  mapped (the evidence for leaving more of torch's CUDA libraries out of the
#                  image: the Dockerfile's LEAVE_OUT)
#   4. bench       python -m drac_algo.bench --device cuda at 1024 x 1024, D4, precision auto
#                  and fp32, with agreement against the naive float32 loop
#   5. train 1024  one epoch of each recipe family at 1024 px on phantom data (autocast,
#                  channels-last), through python -m train
#   6. nccl        torchrun --nproc_per_node=2 -m train, one epoch, where two GPUs exist
#   7. ranks       scripts/bench-ranks.sh: torchrun --nproc_per_node=2 -m process (rank r on
#                  cuda:r) against one process, cases per second and byte-identical outputs,
#                  where two GPUs exist (the dry run: two gloo ranks on the CPU, tiny images)
#   8. job cost    python -m drac_algo.jobcost --local --sizes 4:16g: a platform job of the default
#                  15-member bundle, import to exit, on the GPU with 4 CPUs (the T4 instance's)
#   9. container   ./test.sh --gpus all, where a Docker engine with the NVIDIA runtime exists
#
# Environment: PYTHON (default .venv/bin/python, else python3). Exit status 0 when no step
# failed, 1 otherwise, 2 for bad arguments.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh" gpu-check
dry_run=0
out=gpu-check.md
budget=540

while [[ $# -gt 0 ]]; do
    opt_next "$@"
    case $OPT in
        --dry-run) opt_flag && dry_run=1 ;;
        --out) opt_value out "a file" ;;
        --budget) opt_value budget "a number of seconds" ;;
        -h | --help) opt_flag && usage && exit 0 ;;
        *) opt_unknown ;;
    esac
    shift "$OPT_SHIFT"
done
[[ $budget =~ ^[0-9]+$ ]] || usage_error "--budget takes whole seconds, got '$budget'"

python=$(pick_python)
cd "$ROOT"
work=$(mktemp -d "${TMPDIR:-/tmp}/drac-gpu-check.XXXXXX")
remove_on_exit "$work"
logs=$work/logs
mkdir -p "$logs"

if [[ $dry_run -eq 1 ]]; then
    device=cpu size=128 crop=64 bench_size=64
    export DRAC_GPU_TESTS_ON=cpu # test/test_gpu_path.py runs on the CPU instead of skipping
else
    device=cuda size=1024 crop=512 bench_size=1024
    nvidia-smi -L >/dev/null 2>&1 \
        || die "no NVIDIA GPU answers nvidia-smi here; run with --dry-run, or see: $python -m drac_algo.doctor"
fi
# The GPUs the driver lists (whether torch can use them is the doctor's first finding).
gpu_names=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | paste -sd, - || true)
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)

rows=()
failed=0
# step NAME DETAIL CMD...: run CMD with its output in a log, add a row; the last 20 lines of a
# failing step's log are shown.
step() {
    local name=$1 detail=$2 t0=$SECONDS rc=0
    shift 2
    if ((SECONDS >= budget)); then
        rows+=("| $name | skipped | - | the budget of ${budget}s was spent |")
        return
    fi
    log "$name: $*"
    "$@" >"$logs/$name.log" 2>&1 || rc=$?
    if [[ $rc -eq 0 ]]; then
        rows+=("| $name | passed | $((SECONDS - t0)) | $detail |")
    else
        failed=1
        rows+=("| $name | FAILED (exit $rc) | $((SECONDS - t0)) | $detail; see the log above |")
        tail -n 20 "$logs/$name.log" | sed "s/^/[$name] /" >&2
    fi
}
skip() { rows+=("| $1 | skipped | - | $2 |"); }

step doctor "driver, CUDA, every route of the container test's bundle" \
    "$python" -m drac_algo.doctor --bundle test/container/model

step "gpu tests" "pytest -m gpu on $device" \
    "$python" -m pytest -q -p no:cacheprovider -m gpu test/

fixture=test/container
step libraries "shared libraries a $device run of process.py maps (auto, then fp32)" \
    "$python" scripts/loaded_libraries.py --out "$work/libraries.md" \
    -- --input "$fixture/inputs/batch" --output "$work/lib-auto" --bundle "$fixture/model" \
    --device "$device" \
    -- --input "$fixture/inputs/batch" --output "$work/lib-fp32" --bundle "$fixture/model" \
    --device "$device" --precision fp32

step bench "engine auto and fp32 vs the naive loop, ${bench_size} px, D4, $device" \
    "$python" -m drac_algo.bench --device "$device" --image-size "$bench_size" --tta d4 \
    --methods naive,engine --precision auto,fp32 --repeats 1 --json "$work/bench.json" \
    $([[ $dry_run -eq 1 ]] && echo --quick)

phantom=$work/phantom
"$python" -m drac_algo.synth "$phantom" --n-train 8 --n-test 2 --image-size "$size" --no-preview \
    >"$logs/synth.log" 2>&1 || die "the phantom data could not be written (see $logs/synth.log)"
cat >"$work/one-epoch.toml" <<EOF
input_size = $size
crop_size = $crop
epochs = 1
batch_size = 2
num_workers = 0

[val]
folds = 2
fold = 0
EOF
for recipe in best method; do
    step "train $recipe" "one epoch of irma at $size px, $device (autocast, channels-last)" \
        "$python" -m train --data "$phantom" --out "$work/run-$recipe" --recipe "$recipe" \
        --task irma --config "$work/one-epoch.toml" --device "$device"
done

if [[ $dry_run -eq 0 && $gpus -ge 2 ]]; then
    step nccl "torchrun --nproc_per_node=2, one epoch of nv at $size px" \
        "$python" -m torch.distributed.run --nproc_per_node=2 -m train --data "$phantom" \
        --out "$work/run-ddp" --task nv --config "$work/one-epoch.toml"
else
    skip nccl "needs two GPUs (this machine: $gpus)"
fi

if [[ $dry_run -eq 1 ]]; then
    step ranks "torchrun 2 gloo ranks of process.py vs 1 process, byte-identical, cpu" \
        env PYTHON="$python" scripts/bench-ranks.sh --ranks 2 --device cpu --images 4 --size 64 \
        --out "$work/ranks.md"
elif [[ $gpus -ge 2 ]]; then
    step ranks "torchrun 2 ranks of process.py (cuda:0, cuda:1) vs 1 process, byte-identical" \
        env PYTHON="$python" scripts/bench-ranks.sh --ranks 2 --device cuda --images 64 \
        --size 1024 --out "$work/ranks.md"
else
    skip ranks "needs two GPUs (this machine: $gpus)"
fi

# Last but the container: the default 15-member bundle is written (and exported) first, minutes
# that the budget may not leave; the platform's T4 size has 4 vCPUs and 16 GB.
if [[ $dry_run -eq 1 ]]; then
    step "job cost" "one platform job, import to exit, from this checkout (tiny bundle), cpu" \
        "$python" -m drac_algo.jobcost --local --quick --sizes 1:4g --jobs 1 \
        --out "$work/jobcost.md" --json "$work/jobcost.json"
else
    step "job cost" "one platform job of the default 15-member bundle at 1024 px, 4 CPUs, $device" \
        "$python" -m drac_algo.jobcost --local --sizes 4:16g --jobs 2 \
        --out "$work/jobcost.md" --json "$work/jobcost.json"
fi

if [[ $dry_run -eq 0 ]] && command -v docker >/dev/null \
    && docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"nvidia"'; then
    step container "./test.sh --gpus all: the three platform runs on the GPU" ./test.sh --gpus all
else
    skip container "needs a Docker engine with the NVIDIA runtime"
fi

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
{
    echo "GPU check ($([[ $dry_run -eq 1 ]] && echo "dry run on the CPU" || echo "$device")):" \
        "GPUs: ${gpu_names:-none}; CPU: $cpu; $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "| step | result | seconds | what |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
} >"$out.partial"
mv "$out.partial" "$out"
cat "$out"
[[ -f $work/bench.json ]] && cp "$work/bench.json" "${out%.md}-bench.json"
[[ -f $work/libraries.md ]] && cp "$work/libraries.md" "${out%.md}-libraries.md"
[[ -f $work/ranks.md ]] && cp "$work/ranks.md" "${out%.md}-ranks.md"
[[ -f $work/jobcost.md ]] && cp "$work/jobcost.md" "${out%.md}-jobcost.md"
((failed == 0)) || die "a step failed (the table above, $out)"
log "all steps passed or were skipped with their reason ($out)"
