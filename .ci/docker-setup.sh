#!/usr/bin/env bash
# Make a Docker engine answer on this machine and build the local base image, without any image
# registry. Idempotent: an engine that already answers is left alone, an existing base image is kept.
#
#   sudo .ci/docker-setup.sh                  # engine + base image drac-algo-base:bookworm
#   sudo .ci/docker-setup.sh --rebuild-base   # rebuild the base image even if it exists
#   .ci/docker-setup.sh --no-base             # engine only
#
# Environment: DOCKERD_LOG (default /var/log/dockerd.log), DOCKERD_WAIT_S (default 60),
# BASE_TAG (default drac-algo-base:bookworm), DEBIAN_MIRROR (default: the mirror apt uses here).
#
# Why a home-made base image: no registry is reachable from the build machines, so `FROM
# python:3.11-slim-bookworm` cannot be pulled. debootstrap only needs the Debian mirror that apt
# already uses, and `docker import` turns the root filesystem into an image.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh" docker-setup

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
DOCKERD_WAIT_S=${DOCKERD_WAIT_S:-60}
BASE_TAG=${BASE_TAG:-drac-algo-base:bookworm}
SUITE=bookworm
# The packages the Dockerfile needs from its base: a Python 3.11 that can make a venv.
BASE_PACKAGES=python3,python3-venv,python3-pip,ca-certificates

build_base=1
rebuild_base=0
while [[ $# -gt 0 ]]; do
    opt_next "$@"
    case $OPT in
        --no-base) opt_flag && build_base=0 ;;
        --rebuild-base) opt_flag && rebuild_base=1 ;;
        -h | --help) opt_flag && usage && exit 0 ;;
        *) usage_error "unknown argument '$1' (expected --no-base, --rebuild-base)" ;;
    esac
    shift "$OPT_SHIFT"
done

need_root() { [[ $(id -u) -eq 0 ]] || die "$1 needs root (run with sudo)"; }

apt_install() {
    need_root "installing $*"
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || die "apt-get install $* failed"
}

# Prints the first URI apt uses for SUITE, from one-line (.list) or deb822 (.sources) entries.
apt_uri_for_suite() {
    local suite=$1 f
    local -a found=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        mapfile -t -O "${#found[@]}" found < <(awk -v s="$suite" '
            $1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                          if ($(i + 1) == s) print $i }' "$f")
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        mapfile -t -O "${#found[@]}" found < <(awk -v s="$suite" '
            BEGIN { RS = ""; FS = "\n" }
            { uri = ""; deb = 0; hit = 0; off = 0
              for (i = 1; i <= NF; i++) {
                  n = split($i, w, /[ \t]+/)
                  if (w[1] == "URIs:") uri = w[2]
                  if (w[1] == "Types:") for (j = 2; j <= n; j++) if (w[j] == "deb") deb = 1
                  if (w[1] == "Suites:") for (j = 2; j <= n; j++) if (w[j] == s) hit = 1
                  if (w[1] == "Enabled:" && w[2] == "no") off = 1
              }
              if (deb && hit && !off && uri != "") print uri }' "$f")
    done
    [[ ${#found[@]} -gt 0 ]] && echo "${found[0]}"
}

engine_answers() { docker info >/dev/null 2>&1; }

setup_engine() {
    local t0=$SECONDS
    if ! command -v docker >/dev/null || ! command -v dockerd >/dev/null; then
        # docker.io brings dockerd, containerd, runc and a 20.10 client that has BuildKit built in.
        apt_install docker.io
    fi
    if engine_answers; then
        log "engine already answers: $(docker version --format 'server {{.Server.Version}}')"
        return
    fi
    need_root "starting dockerd"
    local started=
    if [[ -d /run/systemd/system ]]; then
        log "starting docker with systemctl"
        systemctl start docker || die "systemctl start docker failed (see: journalctl -u docker)"
    elif [[ -f /var/run/docker.pid ]] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        log "dockerd (pid $(cat /var/run/docker.pid)) is running but not answering yet; waiting"
    else
        log "starting dockerd in the background, log: $DOCKERD_LOG"
        mkdir -p "$(dirname "$DOCKERD_LOG")"
        # setsid: dockerd must outlive this script and not get its terminal's signals; --wait
        # keeps $! alive exactly as long as dockerd, whether or not setsid had to fork.
        setsid --wait nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
        started=$!
    fi
    local waited=0
    until engine_answers; do
        if [[ -n $started ]] && ! kill -0 "$started" 2>/dev/null; then
            echo "--- last lines of $DOCKERD_LOG ---" >&2
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            die "dockerd exited during start-up (log above)"
        fi
        if ((waited >= DOCKERD_WAIT_S)); then
            echo "--- last lines of $DOCKERD_LOG ---" >&2
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            die "docker engine did not answer 'docker info' within ${DOCKERD_WAIT_S}s"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "engine answers after ${waited}s: $(docker version --format 'server {{.Server.Version}}')"
    log "engine setup took $((SECONDS - t0))s"
}

# BuildKit check. Docker CLIs from 23.0 on hand BuildKit builds to the buildx plugin and refuse
# DOCKER_BUILDKIT=1 without it; Debian bookworm packages no buildx, but its 20.10 client (at
# /usr/bin/docker) still drives the daemon's built-in BuildKit. build.sh makes the same choice.
report_buildkit() {
    if docker buildx version >/dev/null 2>&1; then
        log "BuildKit: docker buildx $(docker buildx version | awk '{print $2}')"
        return
    fi
    local client
    for client in docker /usr/bin/docker; do
        command -v "$client" >/dev/null || continue
        local id
        if id=$(printf 'FROM scratch\nLABEL drac-algo.probe=1\n' \
            | DOCKER_BUILDKIT=1 "$client" build -q - 2>/dev/null); then
            docker rmi "$id" >/dev/null 2>&1 || true
            log "BuildKit: built in, via DOCKER_BUILDKIT=1 $(command -v "$client")" \
                "(client $("$client" version --format '{{.Client.Version}}' 2>/dev/null))"
            return
        fi
    done
    log "warning: no client here can build with BuildKit; build.sh will refuse" \
        "(install the buildx plugin)"
}

build_base_image() {
    if [[ $rebuild_base -eq 0 ]] && docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
        log "base image $BASE_TAG exists; kept (--rebuild-base to remake it)"
        return
    fi
    need_root "debootstrap"
    command -v debootstrap >/dev/null || apt_install debootstrap
    local t0=$SECONDS mirror security
    mirror=${DEBIAN_MIRROR:-$(apt_uri_for_suite "$SUITE" || true)}
    [[ -n $mirror ]] || die "no apt source for suite '$SUITE' in /etc/apt/sources.list*;" \
        "set DEBIAN_MIRROR=http://deb.debian.org/debian"
    security=$(apt_uri_for_suite "$SUITE-security" || true)
    security=${security:-${mirror%/debian}/debian-security}
    log "debootstrap $SUITE (minbase + $BASE_PACKAGES) from $mirror"

    local root
    root=$(mktemp -d /var/tmp/drac-algo-rootfs.XXXXXX)
    remove_on_exit "$root" "$root.log"
    # mktemp makes 0700; apt's unprivileged _apt user must be able to enter the new root.
    chmod 0755 "$root"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$root" "$mirror" \
        >"$root.log" 2>&1 || {
        tail -n 20 "$root.log" >&2
        die "debootstrap failed (last lines of its log above)"
    }

    cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb $security $SUITE-security main
EOF
    # Same trimming as Debian's own -slim images: no manuals, no translations, keep copyrights.
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
    log "apt-get upgrade inside the root filesystem (security and point-release fixes)"
    chroot "$root" sh -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update \
        && apt-get upgrade -y && apt-get clean' >>"$root.log" 2>&1 || {
        tail -n 20 "$root.log" >&2
        die "apt-get upgrade in the base root filesystem failed (last lines of its log above)"
    }
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/*.log
    find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$root"/usr/share/{man,groff,info,lintian,locale}/*
    local python_version
    python_version=$(chroot "$root" python3 --version 2>&1 || true)
    [[ $python_version == "Python 3.11."* ]] \
        && chroot "$root" python3 -m venv --help >/dev/null \
        && chroot "$root" python3 -m ensurepip --version >/dev/null \
        || die "the base root filesystem has no usable Python 3.11 with venv and ensurepip" \
            "(python3 --version: ${python_version:-nothing})"

    log "docker import -> $BASE_TAG"
    tar --numeric-owner -C "$root" -c . | docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "debootstrap $SUITE minbase + $BASE_PACKAGES from $mirror" \
        - "$BASE_TAG" >/dev/null || die "docker import failed"
    rm -rf --one-file-system "$root"
    rm -f "$root.log"
    log "base image $BASE_TAG: $(docker image inspect "$BASE_TAG" --format '{{.Size}}' \
        | awk '{printf "%.0f MB", $1 / 1e6}'); took $((SECONDS - t0))s"
}

setup_engine
report_buildkit
if [[ $build_base -eq 1 ]]; then
    build_base_image
fi
log "done in ${SECONDS}s"
