# Shared preamble of build.sh, export.sh, test.sh and .ci/docker-setup.sh; sourced, never run:
#
#   ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
#   source "$ROOT/scripts/common.sh" build     # the tag of the script's log lines: [build] ...
#
# It sets strict mode, and gives the script:
#   log MSG...           "[tag] MSG" on stdout
#   die MSG...           "[tag] error: MSG" on stderr, exit 1 (a failure while doing the work)
#   usage                the script's header comment (its --help)
#   usage_error MSG...   the synopsis, then "[tag] error: MSG" on stderr, exit 2 (bad arguments)
#   opt_next, opt_value, opt_flag, opt_unknown
#                        one way to read --flag VALUE, --flag=VALUE and flags (below)
#   on_exit FUNC, remove_on_exit PATH...
#                        clean-up run on any exit, Ctrl-C and SIGTERM included
#   pick_python          the host interpreter: $PYTHON, else ROOT/.venv/bin/python, else python3
#   check_bundle_dir DIR the model bundle's manifest, files and checksums, by
#                        `python -m drac_algo.bundle check` (no Python in shell strings)
#
# Bash >= 4.4 (empty arrays under set -u) and GNU userland, as the scripts need anyway.
# shellcheck shell=bash

set -euo pipefail

[[ $# -eq 1 && -n $1 ]] || {
    echo "scripts/common.sh: expected one argument, the caller's log tag (e.g. build); got $#" >&2
    exit 2
}
LOG_TAG=$1
# The script that sourced this file: its header comment is its help.
SCRIPT_FILE=${BASH_SOURCE[1]}
# The checkout: this file's parent folder (whatever ROOT the environment holds).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { echo "[$LOG_TAG] $*"; }
die() {
    echo "[$LOG_TAG] error: $*" >&2
    exit 1
}

# The header comment: every line from the second up to the first that is not a comment.
usage() { awk 'NR > 1 { if (!/^#/) exit; print }' "$SCRIPT_FILE"; }

# The header's synopsis: its first block of lines indented by three spaces after the '#',
# printed as "usage: ..." with the continuation lines kept aligned.
synopsis() {
    awk 'NR > 1 && !/^#/ { exit }
        /^#   / { sub(/^#   /, found ? "       " : "usage: "); print; found = 1; next }
        found { exit }' "$SCRIPT_FILE"
}

usage_error() {
    synopsis >&2
    echo "[$LOG_TAG] error: $*; $0 --help lists the options" >&2
    exit 2
}

# ---------------------------------------------------------------------------------------------
# Arguments. One loop shape for every script:
#
#   while [[ $# -gt 0 ]]; do
#       opt_next "$@"
#       case $OPT in
#           --tag) opt_value tag ;;                 # --tag TAG or --tag=TAG
#           --bundle) opt_value bundle "a folder" ;;
#           --offline) opt_flag && offline=1 ;;     # --offline=... is refused
#           -h | --help) opt_flag && usage && exit 0 ;;
#           *) opt_unknown ;;
#       esac
#       shift "$OPT_SHIFT"
#   done
#
# opt_next reads the argument in front: OPT is its name (--tag for --tag=x), OPT_SHIFT how many
# arguments it used (1, or 2 once opt_value took the next one). Only arguments that start with
# '--' are split at '=', so a positional path such as runs/a=b stays whole.

opt_next() {
    OPT=$1
    OPT_SHIFT=1
    _opt_arg=$1
    _opt_inline=
    _opt_has_inline=0
    if [[ $1 == --?*=* ]]; then
        OPT=${1%%=*}
        _opt_inline=${1#*=}
        _opt_has_inline=1
    fi
    _opt_has_next=0
    _opt_next=
    if [[ $# -gt 1 ]]; then
        _opt_has_next=1
        _opt_next=$2
    fi
}

# opt_value VAR [WHAT]: VAR=the option's value (after '=' or the next argument). WHAT names the
# value in the error ("--bundle needs a folder"); the default is "a value". An empty value or a
# next argument that is itself a long option counts as missing.
opt_value() {
    local what=${2:-a value} value
    if [[ $_opt_has_inline -eq 1 ]]; then
        value=$_opt_inline
    elif [[ $_opt_has_next -eq 1 && $_opt_next != --* ]]; then
        value=$_opt_next
        OPT_SHIFT=2
    else
        value=
    fi
    if [[ -z $value ]]; then
        if [[ $_opt_has_inline -eq 0 && $_opt_has_next -eq 1 && -n $_opt_next ]]; then
            usage_error "$OPT needs $what; found the option '$_opt_next' after it"
        fi
        usage_error "$OPT needs $what"
    fi
    printf -v "$1" '%s' "$value"
}

# A flag takes no value: --offline=yes is a usage error, not a silent --offline.
opt_flag() {
    [[ $_opt_has_inline -eq 0 ]] || usage_error "$OPT takes no value; found '$_opt_arg'"
}

opt_unknown() { usage_error "unknown argument '$_opt_arg'"; }

# ---------------------------------------------------------------------------------------------
# Clean-up. One EXIT trap, set here, runs the registered functions (last registered first), then
# removes the registered paths; the exit status is kept. Ctrl-C and SIGTERM exit 130 and 143
# through it. A script must not set its own EXIT trap: that would drop these.

_exit_functions=()
_exit_paths=()

on_exit() { _exit_functions+=("$1"); }
remove_on_exit() { _exit_paths+=("$@"); }

_run_exit_actions() {
    local status=$? i
    for ((i = ${#_exit_functions[@]} - 1; i >= 0; i--)); do
        "${_exit_functions[i]}" || true
    done
    # --one-file-system: never follow a mount point left inside a scratch folder (a chroot's).
    for i in "${!_exit_paths[@]}"; do
        rm -rf --one-file-system -- "${_exit_paths[i]}" || true
    done
    exit "$status"
}
trap _run_exit_actions EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# The host's Python and what the scripts ask of it.

# Prints the interpreter to use on the host ($PYTHON, else ROOT/.venv/bin/python, else python3;
# a name in $PYTHON is looked up on PATH), or nothing when there is none.
pick_python() {
    local candidate=${PYTHON:-$ROOT/.venv/bin/python}
    if [[ -x $candidate ]]; then
        echo "$candidate"
    elif command -v "$candidate" >/dev/null 2>&1; then
        command -v "$candidate"
    else
        command -v python3 || true
    fi
}

# check_bundle_dir DIR [--platform FILE]: DIR must hold manifest.json (checked here, with no
# Python needed), and then, where the host Python can import this checkout's drac_algo, the full
# check: `python -m drac_algo.bundle check`, whose summary lines are logged. Bundle problems end
# the script (exit 1, the checker's message under this script's tag); a host without a usable
# drac_algo (no Python, no torch) gets a warning and the manifest-only check. Sets BUNDLE_CHECKED
# to 1 after the full check, 0 otherwise.
check_bundle_dir() {
    local dir=$1 python out status line
    shift
    [[ -d $dir ]] || die "no model bundle folder at $dir; expected a folder holding" \
        "manifest.json and the member weight files it lists"
    dir=$(cd "$dir" && pwd)
    [[ -f $dir/manifest.json ]] || die "$dir holds no manifest.json; expected a model" \
        "bundle (manifest.json + member weight files); found there:" \
        "$(find "$dir" -mindepth 1 -maxdepth 1 -printf '%f ' | head -c 300)"
    BUNDLE_CHECKED=0
    python=$(pick_python)
    if [[ -z $python ]]; then
        log "warning: no Python here (set PYTHON); only $dir/manifest.json was checked"
        return 0
    fi
    # From ROOT, so that the checkout's drac_algo is the one imported.
    status=0
    out=$(cd "$ROOT" && "$python" -m drac_algo.bundle check "$dir" "$@" 2>&1) || status=$?
    case $status in
        0)
            BUNDLE_CHECKED=1
            while IFS= read -r line; do log "$line"; done <<<"$out"
            ;;
        2) die "${out#error: }" ;;
        *)
            log "warning: $python cannot run 'python -m drac_algo.bundle check' (exit $status:" \
                "$(tail -n 1 <<<"$out")); only $dir/manifest.json was checked"
            ;;
    esac
}
