#!/usr/bin/env bash
# Package the algorithm for upload to Grand Challenge: the container image and the model tarball.
#
#   ./export.sh [--tag TAG] [--bundle DIR] [--out DIR] [--image-only | --model-only]
#   ./export.sh runs/2024-06-01/model          # the bundle may also be given as the argument
#
#   --tag TAG      image to save (default drac-algo)          -> OUT/drac-algo.tar.gz
#   --bundle DIR   model bundle folder (default runs/latest/model): manifest.json plus the member
#                  weight files it lists                       -> OUT/model.tar.gz
#   --out DIR      output folder (default dist)
#
# Grand Challenge extracts model.tar.gz into /opt/ml/model, so the tarball holds the bundle's
# contents at its top level (manifest.json, not model/manifest.json). Both files are written
# under a temporary name and renamed when complete, so an interrupted export leaves no
# half-written tarball behind.
#
# Environment: PYTHON (an interpreter that can import drac_algo, to check the bundle's files and
# checksums; default .venv/bin/python).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tag=drac-algo
bundle=
out=dist
do_image=1
do_model=1

usage() { awk 'NR > 1 { if (!/^#/) exit; print }' "${BASH_SOURCE[0]}"; } # the header comment
log() { echo "[export] $*"; }
die() {
    echo "[export] error: $*" >&2
    exit 1
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --tag)
            tag=${2:?--tag needs a value}
            shift 2
            ;;
        --bundle)
            bundle=${2:?--bundle needs a folder}
            shift 2
            ;;
        --out)
            out=${2:?--out needs a folder}
            shift 2
            ;;
        --image-only)
            do_model=0
            shift
            ;;
        --model-only)
            do_image=0
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        -*)
            usage >&2
            die "unknown option '$1'"
            ;;
        *)
            [[ -z $bundle ]] || die "two bundle folders given: '$bundle' and '$1'"
            bundle=$1
            shift
            ;;
    esac
done
((do_image + do_model > 0)) || die "--image-only and --model-only exclude each other"
bundle=${bundle:-$ROOT/runs/latest/model}

# Temporary files of this run, removed on any exit; renamed away when complete.
partial=()
cleanup() {
    local p
    for p in "${partial[@]}"; do rm -f "$p"; done
}
trap cleanup EXIT

human() { numfmt --to=iec --suffix=B "$(stat -c %s "$1")"; }

check_bundle() {
    [[ -d $bundle ]] || die "no model bundle folder at $bundle; expected a folder holding" \
        "manifest.json and the member weight files it lists (pass --bundle DIR)"
    bundle=$(cd "$bundle" && pwd)
    [[ -f $bundle/manifest.json ]] || die "$bundle holds no manifest.json; expected a model" \
        "bundle (manifest.json + member weight files); found there:" \
        "$(find "$bundle" -mindepth 1 -maxdepth 1 -printf '%f ' | head -c 300)"
    local python=${PYTHON:-$ROOT/.venv/bin/python}
    if [[ -x $python ]] && (cd "$ROOT" && "$python" -c 'import drac_algo.bundle' 2>/dev/null); then
        (cd "$ROOT" && "$python" -c 'import sys; from drac_algo.bundle import load_bundle
from drac_algo.errors import DracInputError
try:
    load_bundle(sys.argv[1])
except DracInputError as exc:
    sys.exit(f"[export] error: {exc}")' "$bundle") || exit 1
        log "bundle $bundle: manifest, member files and checksums check out"
    else
        log "warning: no Python with drac_algo ($python); only manifest.json was checked"
    fi
}

mkdir -p "$out"

if [[ $do_model -eq 1 ]]; then
    check_bundle
    target=$out/model.tar.gz
    tmp=$(mktemp "$out/.model.tar.gz.XXXXXX")
    partial+=("$tmp")
    log "tar -czf $target -C $bundle ."
    # Sorted names and root ownership: the tarball depends on the bundle only. Modes readable by
    # all: the container runs as a non-root user, and bundle folders are often made 0700
    # (mkdtemp); the platform extracts the modes as they are.
    tar --sort=name --owner=0 --group=0 --numeric-owner --mode='u+rwX,go+rX,go-w' \
        -czf "$tmp" -C "$bundle" .
    chmod 0644 "$tmp"
    mv "$tmp" "$target"
    log "model:  $target ($(human "$target"))"
fi

if [[ $do_image -eq 1 ]]; then
    docker info >/dev/null 2>&1 \
        || die "no docker engine answers 'docker info' (start one with: sudo .ci/docker-setup.sh)"
    docker image inspect "$tag" >/dev/null 2>&1 \
        || die "no image '$tag' here; build it first with ./build.sh --tag $tag"
    target=$out/drac-algo.tar.gz
    tmp=$(mktemp "$out/.image.tar.gz.XXXXXX")
    partial+=("$tmp")
    zip=(gzip -c)
    command -v pigz >/dev/null && zip=(pigz -c)
    log "docker save $tag | ${zip[*]} > $target"
    t0=$SECONDS
    docker save "$tag" | "${zip[@]}" >"$tmp"
    chmod 0644 "$tmp"
    mv "$tmp" "$target"
    log "image:  $target ($(human "$target"), image id" \
        "$(docker image inspect "$tag" --format '{{.Id}}' | cut -c8-19)); took $((SECONDS - t0))s"
fi
