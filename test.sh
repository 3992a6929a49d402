#!/usr/bin/env bash
# Test the algorithm container the way Grand Challenge runs it, on the checked-in inputs of both
# input modes (a platform job with inputs.json, a batch folder of PNGs) with the checked-in model
# bundle, and compare every output with the checked-in expected outputs. A third run repeats the
# platform job with a model.tar.gz that carries other output socket names (platform.json, from
# test/container/platform-sockets.json): the same image, retargeted without a rebuild.
#
#   ./test.sh [--tag TAG] [--offline] [--base IMAGE] [--build | --no-build] [--gpus auto|all|none]
#             [--keep] [-- PROCESS_ARGS...]
#
#   --offline, --base IMAGE  passed to ./build.sh; either one implies --build
#   --build        run ./build.sh first (seconds when nothing changed: Docker's layer cache)
#   --no-build     test image TAG as it is, even when its code differs from this checkout
#                  (default: build only when TAG is missing; refuse an out-of-date image)
#   --gpus MODE    auto (default): '--gpus all' when the docker engine has an nvidia runtime
#   --keep         keep the scratch folder (outputs, extracted model) and print where it is
#   -- ARGS        extra arguments for process.py in the container, e.g. -- --verbose
#
# Precision: the container runs with '--precision fp32' (ARGS can override it, e.g.
# -- --precision auto). The expected outputs are float32 references; the platform default,
# mixed precision wherever the hardware computes it natively (bf16 on Ampere+ GPUs and on CPUs
# with AVX512-BF16/AMX, fp16 on the T4), moves pixels that sit at the threshold, and the tiny
# fixture model has many: up to Dice 0.87 on a 17-pixel mask. Everything else is as the platform
# runs it.
#
# Fixtures in test/container/ (its README.md says what they are and how to regenerate them).
# Environment: MEM_LIMIT (default 8g), RUN_TIMEOUT_S (per container run, default 600), PYTHON
# (host interpreter with numpy and SimpleITK for compare.py; default .venv/bin/python, else
# python3); PIP_CERT and PYTHON also reach ./build.sh.
# Exit status: 0 when both runs succeed and match; 1 on any failure, each one named; 2 for bad
# arguments.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh" test
FIXTURES=$ROOT/test/container
MODES=(gc-job batch)
RUNS=(gc-job batch gc-job-sockets) # <mode>[-sockets]: the -sockets runs use model.tar.gz + platform.json
MEM_LIMIT=${MEM_LIMIT:-8g}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-600}

tag=drac-algo
build=auto
build_opts=()
gpus=auto
keep=0
process_args=(--precision fp32)

while [[ $# -gt 0 ]]; do
    opt_next "$@"
    case $OPT in
        --tag) opt_value tag ;;
        --offline) opt_flag && build_opts+=(--offline) ;;
        --base)
            opt_value base
            build_opts+=(--base "$base")
            ;;
        --build) opt_flag && build=always ;;
        --no-build) opt_flag && build=never ;;
        --gpus)
            opt_value gpus "auto, all or none"
            [[ $gpus =~ ^(auto|all|none)$ ]] || usage_error "--gpus $gpus: expected auto, all or none"
            ;;
        --keep) opt_flag && keep=1 ;;
        -h | --help) opt_flag && usage && exit 0 ;;
        --)
            shift
            process_args+=("$@") # after ours: click takes the last --precision
            break
            ;;
        *) opt_unknown ;;
    esac
    shift "$OPT_SHIFT"
done
if [[ ${#build_opts[@]} -gt 0 ]]; then
    [[ $build != never ]] || usage_error "--no-build excludes the build options ${build_opts[*]}"
    build=always
fi

# ---------------------------------------------------------------------------------------------
# Preflight: everything that can be checked before the (slow) build.

python=$(pick_python)
[[ -n $python ]] || die "no Python for compare.py (set PYTHON to one with numpy and SimpleITK)"
for f in compare.py model/manifest.json; do
    [[ -f $FIXTURES/$f ]] || die "$FIXTURES/$f is missing (see $FIXTURES/README.md)"
done
# compare.py imports numpy and SimpleITK before it reads its arguments.
"$python" "$FIXTURES/compare.py" --help >/dev/null 2>&1 \
    || die "$python cannot run compare.py, which needs numpy and SimpleITK (set PYTHON)"
for mode in "${MODES[@]}"; do
    [[ -d $FIXTURES/inputs/$mode ]] || die "$FIXTURES/inputs/$mode is missing (see $FIXTURES/README.md)"
done
for name in "${RUNS[@]}"; do
    [[ -d $FIXTURES/expected/$name ]] \
        || die "$FIXTURES/expected/$name is missing (see $FIXTURES/README.md)"
done
[[ -f $FIXTURES/platform-sockets.json ]] \
    || die "$FIXTURES/platform-sockets.json is missing (see $FIXTURES/README.md)"
docker info >/dev/null 2>&1 \
    || die "no docker engine answers 'docker info' (start one with: sudo .ci/docker-setup.sh)"

# ---------------------------------------------------------------------------------------------
# Scratch space and cleanup. Containers are named, so an interrupted run's container can be
# removed; outputs the container's user wrote may be undeletable by a non-root caller, so a
# container of the same image (same user) empties them first.

work=
containers=()
output_dirs=()
cleanup() {
    local name dir
    for name in "${containers[@]}"; do docker rm -f "$name" >/dev/null 2>&1 || true; done
    if [[ -n $work && -d $work ]]; then
        if [[ $keep -eq 1 ]]; then
            log "kept the scratch folder $work"
        else
            if ! rm -rf "$work" 2>/dev/null; then
                for dir in "${output_dirs[@]}"; do
                    docker run --rm --network none --entrypoint find -v "$dir:/output" "$tag" \
                        /output -mindepth 1 -delete >/dev/null 2>&1 || true
                done
                rm -rf "$work" || log "warning: could not remove $work"
            fi
        fi
    fi
}
on_exit cleanup
work=$(mktemp -d "${TMPDIR:-/tmp}/drac-algo-test.XXXXXX")

# ---------------------------------------------------------------------------------------------
# The image.

# sha256 of every file the image gets from this checkout (see .dockerignore), as "sum  path"
# lines in C order; run on the host or, with the same command, inside the image at /opt/app.
list_code='LC_ALL=C find drac_algo process.py requirements-inference.txt -type f ! -name "*.pyc" \
    ! -path "*/__pycache__/*" -print0 | LC_ALL=C sort -z | xargs -0 sha256sum'

if [[ $build == auto ]] && ! docker image inspect "$tag" >/dev/null 2>&1; then
    log "no image $tag here; building it"
    build=always
fi
if [[ $build == always ]]; then
    t0=$SECONDS
    log "./build.sh --tag $tag ${build_opts[*]}"
    "$ROOT/build.sh" --tag "$tag" "${build_opts[@]}" || die "./build.sh failed"
    log "build step took $((SECONDS - t0))s"
fi
docker image inspect "$tag" >/dev/null 2>&1 || die "no image $tag (build it with ./build.sh)"
image_code=$(docker run --rm --network none --entrypoint sh "$tag" -c "cd /opt/app && $list_code") \
    || die "could not list the code inside image $tag"
# The checkout's side without what .dockerignore keeps out of drac_algo/ (its drac_algo/ lines;
# a folder's trailing slash dropped, since a folder matches as ENTRY/ below).
not_in_image=$(sed -n 's|^\(drac_algo/[^#[:space:]]*[^/#[:space:]]\)/*[[:space:]]*$|\1|p' \
    "$ROOT/.dockerignore")
host_code=$(cd "$ROOT" && sh -c "$list_code" | awk -v skip="$not_in_image" '
    BEGIN { n = split(skip, gone, "\n") }
    { for (i = 1; i <= n; i++) if ($2 == gone[i] || index($2, gone[i] "/") == 1) next; print }
') || die "could not list the code of $ROOT"
if [[ $image_code != "$host_code" ]]; then
    stale=$(diff <(echo "$image_code") <(echo "$host_code") | awk '/^[<>]/ { print $3 }' \
        | sort -u | head -n 10 | sed 's/^/    /' || true)
    msg="image $tag holds other code than this checkout; files that differ:"$'\n'"$stale"
    if [[ $build == never ]]; then
        log "warning (--no-build): $msg"
    else
        die "$msg"$'\n'"rebuild: ./build.sh (with your --offline/--base), or pass those to ./test.sh"
    fi
fi
# What the Dockerfile leaves out of the image (its LEAVE_OUT: packages inference never loads)
# must be absent, so the runs below prove that inference works without them.
read -ra leave_out <<<"$(sed -n 's/^ARG LEAVE_OUT="\(.*\)"$/\1/p' "$ROOT/Dockerfile")"
if ((${#leave_out[@]})); then
    # pip's own list (names normalised: lower case, '_' and '.' as '-'), read here.
    installed=$(docker run --rm --network none --entrypoint python "$tag" -m pip list \
        --format freeze --disable-pip-version-check --no-color) \
        || die "could not list the packages inside image $tag"
    installed=$(sed 's/==.*//; s/[_.]/-/g' <<<"$installed" | tr '[:upper:]' '[:lower:]')
    present=
    for name in "${leave_out[@]}"; do
        if grep -qxF "$name" <<<"$installed"; then present+=" $name"; fi
    done
    [[ -z $present ]] || die "image $tag holds what the Dockerfile leaves out:$present" \
        "(rebuild: ./build.sh)"
    log "left out of the image, as the Dockerfile says: ${leave_out[*]}"
fi
user=$(docker image inspect "$tag" --format '{{.Config.User}}')
[[ -n $user && $user != root && $user != 0 && $user != 0:* ]] \
    || die "image $tag runs as '${user:-root}'; Grand Challenge expects a non-root USER"

# ---------------------------------------------------------------------------------------------
# The model, as uploaded: export.sh's model.tar.gz, extracted the way the platform does it.

log "./export.sh --model-only --bundle test/container/model"
"$ROOT/export.sh" --model-only --bundle "$FIXTURES/model" --out "$work/dist" >/dev/null \
    || die "./export.sh --model-only failed on $FIXTURES/model"
mkdir "$work/model"
tar -xzpf "$work/dist/model.tar.gz" -C "$work/model"
[[ -f $work/model/manifest.json ]] || die "model.tar.gz has no manifest.json at its top level:" \
    "$(tar -tzf "$work/dist/model.tar.gz" | head -n 5 | tr '\n' ' ')"
log "./export.sh --model-only --bundle test/container/model --platform test/container/platform-sockets.json"
"$ROOT/export.sh" --model-only --bundle "$FIXTURES/model" --platform "$FIXTURES/platform-sockets.json" \
    --out "$work/dist-sockets" >/dev/null || die "./export.sh --platform failed"
mkdir "$work/model-sockets"
tar -xzpf "$work/dist-sockets/model.tar.gz" -C "$work/model-sockets"
[[ -f $work/model-sockets/platform.json ]] || die "model.tar.gz from --platform has no platform.json"

# ---------------------------------------------------------------------------------------------
# The runs, with the platform's restrictions.

run_opts=(
    --network none
    --memory "$MEM_LIMIT" --memory-swap "$MEM_LIMIT"
    --cap-drop ALL
    --security-opt no-new-privileges
    --pids-limit 256
    --shm-size 128m
    --tmpfs "/tmp:rw,exec,nosuid,nodev,mode=1777"
)
case $gpus in
    auto)
        if docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"nvidia"'; then
            run_opts+=(--gpus all)
        fi
        ;;
    all) run_opts+=(--gpus all) ;;
    none) ;;
esac
log "image $tag ($(docker image inspect "$tag" --format '{{.Id}}' | cut -c8-19)), user $user," \
    "memory $MEM_LIMIT, $([[ ${run_opts[*]} == *--gpus* ]] && echo GPU || echo 'no GPU')"

failures=()
for run in "${RUNS[@]}"; do
    mode=${run%-sockets}
    model=$work/model
    [[ $run == "$mode" ]] || model=$work/model-sockets
    input=$work/input-$run
    output=$work/output-$run
    name=drac-algo-test-$$-$run
    # Copies, readable by any uid whatever the checkout's umask; the output is fresh and
    # writable by the image's user (its uid is the image's business, hence 0777; the scratch
    # folder above it is private).
    cp -R "$FIXTURES/inputs/$mode" "$input"
    chmod -R a+rX "$input"
    mkdir "$output"
    chmod 0777 "$output"
    output_dirs+=("$output")
    containers+=("$name")

    volumes=(--volume "$model:/opt/ml/model:ro" --volume "$input:/input:ro" --volume "$output:/output")
    log "$run: docker run ${run_opts[*]} ${volumes[*]} $tag ${process_args[*]}"
    t0=$SECONDS
    rc=0
    timeout "$RUN_TIMEOUT_S" docker run --rm --name "$name" "${run_opts[@]}" "${volumes[@]}" \
        "$tag" "${process_args[@]}" 2>&1 | sed "s/^/[$run] /" || rc=$?
    if [[ $rc -eq 124 ]]; then
        failures+=("$run: the container ran longer than ${RUN_TIMEOUT_S}s (RUN_TIMEOUT_S)")
        continue
    elif [[ $rc -ne 0 ]]; then
        failures+=("$run: the container exited with status $rc (its log is above)")
        continue
    fi
    log "$run: container finished in $((SECONDS - t0))s; comparing with test/container/expected/$run"
    if ! "$python" "$FIXTURES/compare.py" "$FIXTURES/expected/$run" "$output"; then
        failures+=("$run: the outputs differ from test/container/expected/$run (listed above)")
    fi
done

# The self-check of the README's first-upload checklist, with the platform's restrictions: the
# doctor must find everything a run needs inside the image, on the uploaded model.
log "doctor: docker run ${run_opts[*]} --entrypoint python $tag -m drac_algo.doctor --bundle /opt/ml/model"
rc=0
timeout "$RUN_TIMEOUT_S" docker run --rm "${run_opts[@]}" --volume "$work/model:/opt/ml/model:ro" \
    --entrypoint python "$tag" -m drac_algo.doctor --bundle /opt/ml/model 2>&1 \
    | sed "s/^/[doctor] /" || rc=$?
[[ $rc -eq 0 ]] || failures+=("doctor: drac_algo.doctor --bundle exited with status $rc (above)")

if [[ ${#failures[@]} -gt 0 ]]; then
    echo "[test] FAILED:" >&2
    printf '  %s\n' "${failures[@]}" >&2
    exit 1
fi
log "passed: ${RUNS[*]} outputs match test/container/expected (${SECONDS}s in all)"
