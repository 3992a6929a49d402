#!/usr/bin/env bash
# Cases per second of one process.py against torchrun with N ranks, on the same images, and
# whether their masks and stacks are byte-identical (a benchmark, not a test).
#
#   scripts/bench-ranks.sh [--ranks N] [--device cpu|cuda] [--images N] [--size PX] [--out FILE]
#
#   --ranks N     ranks of the torchrun run (default 2; on a GPU node: its GPUs)
#   --device D    cpu (default; gloo ranks, one intra-op thread each, as torchrun sets
#                 OMP_NUM_THREADS=1) or cuda (rank r on cuda:r)
#   --images N    phantom images (default 24), --size PX their side (default 512)
#   --out FILE    the markdown lines (default bench-ranks.md)
#
# The bundle is the container test's (test/container/model), TTA d4. Model load and Python
# start-up are inside the wall time, as a user sees it. Environment: PYTHON.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh" bench-ranks
ranks=2 device=cpu images=24 size=512 out=bench-ranks.md
while [[ $# -gt 0 ]]; do
    opt_next "$@"
    case $OPT in
        --ranks) opt_value ranks "a number of ranks" ;;
        --device) opt_value device "cpu or cuda" ;;
        --images) opt_value images "a number of images" ;;
        --size) opt_value size "a side in pixels" ;;
        --out) opt_value out "a file" ;;
        -h | --help) opt_flag && usage && exit 0 ;;
        *) opt_unknown ;;
    esac
    shift "$OPT_SHIFT"
done
for n in "$ranks" "$images" "$size"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || usage_error "--ranks, --images and --size take whole numbers, got '$n'"
done
[[ $device == cpu || $device == cuda ]] || usage_error "--device: expected cpu or cuda, got '$device'"

python=$(pick_python)
cd "$ROOT"
work=$(mktemp -d "${TMPDIR:-/tmp}/drac-bench-ranks.XXXXXX")
remove_on_exit "$work"
"$python" -m drac_algo.synth "$work/phantom" --n-train 0 --n-test "$images" --image-size "$size" \
    --no-preview >"$work/synth.log" 2>&1 || die "phantom data failed (see $work/synth.log)"
input=$(find "$work/phantom" -type d -name "*Testing Set" -path "*Original Images*" | head -n1)
[[ -n $input ]] || die "no test images in $work/phantom"
args=(--input "$input" --bundle test/container/model --tta d4 --device "$device")

# seconds CMD...: the wall time of CMD, its output in the log
seconds() {
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >>"$work/runs.log" 2>&1 || { tail -n 30 "$work/runs.log" >&2; die "failed: $*"; }
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}
# One process as a user runs it: on the CPU, one intra-op thread per core it may use.
t1=$(seconds "$python" process.py "${args[@]}" --output "$work/one")
tn=$(seconds "$python" -m torch.distributed.run --standalone --nproc_per_node="$ranks" \
    -m process "${args[@]}" --output "$work/ranks")
same=yes
while IFS= read -r -d '' f; do
    rel=${f#"$work/one/"}
    cmp -s "$f" "$work/ranks/$rel" || same="NO ($rel differs)"
done < <(find "$work/one" -type f \( -name '*.png' -o -name '*.nii.gz' \) -print0)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
flags=$(grep -o 'avx512_bf16\|avx512f\|avx2\|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | paste -sd, -)
{
    echo "$images images of ${size} px, D4, $device; CPU: $cpu ($flags), $(nproc) core(s)"
    printf '| run | seconds | cases/s |\n|---|---|---|\n'
    printf '| 1 process | %.1f | %.3f |\n' "$t1" "$(echo "$images / $t1" | bc -l)"
    printf '| torchrun %s ranks | %.1f | %.3f |\n' "$ranks" "$tn" "$(echo "$images / $tn" | bc -l)"
    echo "masks and stacks byte-identical: $same"
} >"$out"
cat "$out"
[[ $same == yes ]] || die "the ranks' outputs differ from one process's"
