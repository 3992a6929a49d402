#!/usr/bin/env bash
# Build the algorithm container image.
#
#   ./build.sh [--tag TAG] [--base IMAGE] [--offline] [--bundle DIR]
#
#   --tag TAG      image tag (default drac-algo)
#   --base IMAGE   base image (default: the Dockerfile's, python:3.11-slim-bookworm); with no
#                  registry in reach use drac-algo-base:bookworm from .ci/docker-setup.sh
#   --offline      pip installs only from ./wheels, which this script (re)fills first with
#                  `pip download` for CPython 3.11 manylinux x86_64 (about 3 GB)
#   --bundle DIR   bake the model bundle DIR (holding manifest.json) in at /opt/ml/model
#
# Environment: PYTHON (the host interpreter whose pip downloads wheels and, if it can import
# drac_algo, checks --bundle; default .venv/bin/python, else python3);
# PIP_CERT (a CA bundle that pip inside the build trusts, for TLS-intercepting proxies; passed as
# a BuildKit secret, so it never lands in the image).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh" build
tag=drac-algo
base=
offline=0
bundle=

python=$(pick_python)

while [[ $# -gt 0 ]]; do
    opt_next "$@"
    case $OPT in
        --tag) opt_value tag ;;
        --base) opt_value base ;;
        --offline) opt_flag && offline=1 ;;
        --bundle) opt_value bundle "a folder" ;;
        -h | --help) opt_flag && usage && exit 0 ;;
        *) opt_unknown ;;
    esac
    shift "$OPT_SHIFT"
done

if [[ -n $bundle ]]; then
    # Manifest, member files and checksums (python -m drac_algo.bundle check, where the host
    # Python can run it); the staged copy below is made from the checked folder.
    check_bundle_dir "$bundle"
    bundle=$(cd "$bundle" && pwd)
fi
docker info >/dev/null 2>&1 \
    || die "no docker engine answers 'docker info' (start one with: sudo .ci/docker-setup.sh)"
for f in Dockerfile requirements-inference.txt process.py drac_algo/__init__.py; do
    [[ -e $ROOT/$f ]] || die "$ROOT/$f is missing; the image needs it"
done

# Docker CLIs from 23.0 on hand BuildKit builds to the buildx plugin and refuse without it;
# older clients (Debian bookworm's docker.io 20.10 at /usr/bin/docker) drive the daemon's
# built-in BuildKit themselves. The Dockerfile needs BuildKit for RUN --mount.
builder=()
pick_builder() {
    if docker buildx version >/dev/null 2>&1; then
        builder=(docker buildx build --load)
        return
    fi
    local client id
    for client in docker /usr/bin/docker; do
        command -v "$client" >/dev/null || continue
        if id=$(printf 'FROM scratch\nLABEL drac-algo.probe=1\n' \
            | DOCKER_BUILDKIT=1 "$client" build -q - 2>/dev/null); then
            docker rmi "$id" >/dev/null 2>&1 || true
            builder=(env DOCKER_BUILDKIT=1 "$(command -v "$client")" build)
            return
        fi
    done
    die "no docker client here can build with BuildKit: install the buildx plugin" \
        "(https://docs.docker.com/go/buildx/) or a docker client older than 23.0"
}
pick_builder
log "builder: ${builder[*]}"

build_args=(--build-arg "PIP_OFFLINE=$offline")
if [[ -n ${PIP_CERT:-} ]]; then
    [[ -f $PIP_CERT ]] || die "PIP_CERT=$PIP_CERT is not a file"
    build_args+=(--secret "id=pip-cert,src=$PIP_CERT")
fi
if [[ -n $base ]]; then
    build_args+=(--build-arg "BASE_IMAGE=$base")
    docker image inspect "$base" >/dev/null 2>&1 \
        || log "base image $base is not local; docker will try to pull it" \
            "(no registry? use --base drac-algo-base:bookworm after .ci/docker-setup.sh)"
fi

if [[ $offline -eq 1 ]]; then
    # Wheels for the image's interpreter, not the host's: CPython 3.11, glibc 2.17..2.36 (bookworm).
    platform_args=(--only-binary=:all: --implementation cp --python-version 3.11 --abi cp311)
    for glibc in $(seq 36 -1 17); do platform_args+=(--platform "manylinux_2_${glibc}_x86_64"); done
    platform_args+=(--platform manylinux2014_x86_64)
    stamp=$({
        cat "$ROOT/requirements-inference.txt"
        echo "${platform_args[*]}"
    } | sha256sum | cut -d' ' -f1)
    if [[ -f $ROOT/wheels/.requirements.sha256 && $(<"$ROOT/wheels/.requirements.sha256") == "$stamp" ]]; then
        log "wheels/ matches requirements-inference.txt ($(du -sh "$ROOT/wheels" | cut -f1)); kept"
    else
        log "pip download -r requirements-inference.txt -> wheels/"
        t0=$SECONDS
        tmp=$(mktemp -d "$ROOT/.wheels.tmp.XXXXXX")
        remove_on_exit "$tmp"
        [[ -n $python ]] || die "no Python here to run pip download (set PYTHON)"
        "$python" -m pip download --disable-pip-version-check --no-color \
            --progress-bar off \
            "${platform_args[@]}" --requirement "$ROOT/requirements-inference.txt" --dest "$tmp" \
            || die "pip download failed"
        echo "$stamp" >"$tmp/.requirements.sha256"
        rm -rf "$ROOT/wheels"
        mv "$tmp" "$ROOT/wheels"
        log "wheels/: $(find "$ROOT/wheels" -name '*.whl' | wc -l) wheels," \
            "$(du -sh "$ROOT/wheels" | cut -f1); took $((SECONDS - t0))s"
    fi
fi

if [[ -n $bundle ]]; then
    # The bundle may live anywhere (runs/ never enters the build context): stage a copy inside
    # the context. A copy, not hard links, because its modes are widened for the non-root user
    # (bundle folders are often 0700) and that must not touch the original.
    stage=$(mktemp -d "$ROOT/.bundle-build.XXXXXX")
    remove_on_exit "$stage"
    cp -R "$bundle/." "$stage"
    chmod -R u+rwX,go+rX,go-w "$stage"
    build_args+=(--build-arg "BUNDLE=$(basename "$stage")")
    log "baking bundle $bundle in at /opt/ml/model"
fi

# linux/amd64 always: the platform runs x86-64 instances, and an image built on an arm64 Mac
# without it would not start there.
cmd=("${builder[@]}" --platform linux/amd64 "${build_args[@]}" --tag "$tag" --file "$ROOT/Dockerfile" "$ROOT")
log "${cmd[*]}"
t0=$SECONDS
"${cmd[@]}"
size=$(docker image inspect "$tag" --format '{{.Size}}')
log "built $tag: $(awk -v b="$size" 'BEGIN { printf "%.2f GB", b / 1e9 }');" \
    "build took $((SECONDS - t0))s"
