#!/usr/bin/env bash
# Package the algorithm for upload to Grand Challenge: the container image and the model tarball.
#
#   ./export.sh [--tag TAG] [--bundle DIR] [--platform FILE] [--out DIR]
#               [--image-only | --model-only]
#   ./export.sh runs/2024-06-01/model          # the bundle may also be given as the argument
#
#   --tag TAG      image to save (default drac-algo, i.e. drac-algo:latest; exactly that one
#                  image, never the name's other tags)         -> OUT/drac-algo.tar.gz
#   --bundle DIR   model bundle folder (default runs/latest/model): manifest.json plus the member
#                  weight files it lists                       -> OUT/model.tar.gz
#   --platform FILE  put FILE in model.tar.gz as platform.json: the phase's socket names and
#                  require_gpu, read by the same image without a rebuild (README "First upload";
#                  drac_algo/serve/job_settings.py). Default: the bundle's own platform.json, if any
#   --out DIR      output folder (default dist)
#
# Grand Challenge extracts model.tar.gz into /opt/ml/model, so the tarball holds the bundle's
# contents at its top level (manifest.json, not model/manifest.json). Both files are written
# under a temporary name and renamed when complete, so an interrupted export leaves no
# half-written tarball behind.
#
# Environment: PYTHON (an interpreter that can import drac_algo, to check the bundle's files and
# checksums with `python -m drac_algo.bundle check`; default .venv/bin/python, else python3).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh" export
tag=drac-algo
bundle=
platform=
out=dist
do_image=1
do_model=1

while [[ $# -gt 0 ]]; do
    opt_next "$@"
    case $OPT in
        --tag) opt_value tag ;;
        --bundle) opt_value bundle "a folder" ;;
        --out) opt_value out "a folder" ;;
        --platform) opt_value platform "a file" ;;
        --image-only) opt_flag && do_model=0 ;;
        --model-only) opt_flag && do_image=0 ;;
        -h | --help) opt_flag && usage && exit 0 ;;
        -*) opt_unknown ;;
        *)
            [[ -z $bundle ]] || usage_error "two bundle folders given: '$bundle' and '$1'"
            bundle=$1
            ;;
    esac
    shift "$OPT_SHIFT"
done
((do_image + do_model > 0)) || usage_error "--image-only and --model-only exclude each other"
[[ -z $platform || $do_model -eq 1 ]] || usage_error "--platform goes into model.tar.gz: not with --image-only"
[[ -z $platform || -f $platform ]] || die "--platform $platform: no such file"
# Absolute: the bundle check runs from ROOT.
[[ -z $platform ]] || platform=$(cd "$(dirname "$platform")" && pwd)/$(basename "$platform")
bundle=${bundle:-$ROOT/runs/latest/model}

human() { numfmt --to=iec --suffix=B "$(stat -c %s "$1")"; }

# Manifest, member files and checksums, and the platform.json that goes into the tarball
# (--platform, else the bundle's own): python -m drac_algo.bundle check, via scripts/common.sh.
check_bundle() {
    [[ -d $bundle ]] || die "no model bundle folder at $bundle; expected a folder holding" \
        "manifest.json and the member weight files it lists (pass --bundle DIR)"
    bundle=$(cd "$bundle" && pwd)
    if [[ -n $platform ]]; then
        check_bundle_dir "$bundle" --platform "$platform"
    else
        check_bundle_dir "$bundle"
    fi
}

# `docker save` first writes the image's layers, uncompressed, under the engine's data root
# (DockerRootDir/tmp) and only then streams them into gzip: exporting the 7.2 GB image needs about
# its size free there plus ~60 % of it for the tarball in OUT (4.5 GB measured). Checked up front,
# so that a full disk is named instead of failing minutes into the save.
free_bytes() { echo $(($(df -Pk "$1" | awk 'NR == 2 {print $4}') * 1024)); }
iec() { numfmt --to=iec --suffix=B "$1"; }
check_image_space() {
    local size root need_root need_out what="the uncompressed layers"
    size=$(docker image inspect "$tag" --format '{{.Size}}')
    root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || true)
    need_out=$((size * 6 / 10))
    if [[ -n $root && -d $root ]]; then
        need_root=$size
        if [[ $(stat -c %d "$root") == $(stat -c %d "$out") ]]; then
            need_root=$((size + need_out))
            need_out=0
            what="$what and the tarball in $out"
        fi
        (($(free_bytes "$root") >= need_root)) || die "docker save of '$tag' ($(iec "$size"))" \
            "needs about $(iec "$need_root") free on the disk of $root ($what); found" \
            "$(iec "$(free_bytes "$root")"). Free space (docker builder prune -af; docker image" \
            "prune -f) or pass --out on another disk"
    fi
    (($(free_bytes "$out") >= need_out)) || die "the image tarball needs about" \
        "$(iec "$need_out") free in $out; found $(iec "$(free_bytes "$out")")"
}

mkdir -p "$out"

if [[ $do_model -eq 1 ]]; then
    check_bundle
    target=$out/model.tar.gz
    tmp=$(mktemp "$out/.model.tar.gz.XXXXXX")
    remove_on_exit "$tmp" "$tmp.tar"
    log "tar -czf $target -C $bundle ."
    # Sorted names and root ownership: the tarball depends on the bundle only. Modes readable by
    # all: the container runs as a non-root user, and bundle folders are often made 0700
    # (mkdtemp); the platform extracts the modes as they are.
    tar_opts=(--sort=name --owner=0 --group=0 --numeric-owner --mode='u+rwX,go+rX,go-w')
    if [[ -n $platform ]]; then
        # --platform replaces the bundle's own platform.json, if it has one.
        log "platform.json from $platform"
        tar "${tar_opts[@]}" -cf "$tmp.tar" -C "$bundle" --exclude=./platform.json .
        tar "${tar_opts[@]}" -rf "$tmp.tar" -C "$(dirname "$platform")" \
            --transform="s|.*|./platform.json|" "$(basename "$platform")"
        gzip -c "$tmp.tar" >"$tmp"
    else
        tar "${tar_opts[@]}" -czf "$tmp" -C "$bundle" .
    fi
    chmod 0644 "$tmp"
    mv "$tmp" "$target"
    log "model:  $target ($(human "$target"))"
fi

# `docker save NAME` without a tag saves every local tag of NAME (drac-algo:latest, :old, ...):
# a tarball of several images, GBs larger, and not one image for the platform to run. Always
# one reference: NAME means NAME:latest, as it does for `docker run` and `docker image inspect`.
one_image() {
    local ref=$1
    if [[ $ref != *@* && ${ref##*/} != *:* ]]; then
        ref=$ref:latest
    fi
    echo "$ref"
}

if [[ $do_image -eq 1 ]]; then
    tag=$(one_image "$tag")
    docker info >/dev/null 2>&1 \
        || die "no docker engine answers 'docker info' (start one with: sudo .ci/docker-setup.sh)"
    docker image inspect "$tag" >/dev/null 2>&1 \
        || die "no image '$tag' here; build it first with ./build.sh --tag $tag"
    check_image_space
    target=$out/drac-algo.tar.gz
    tmp=$(mktemp "$out/.image.tar.gz.XXXXXX")
    remove_on_exit "$tmp"
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
