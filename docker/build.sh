#!/usr/bin/env bash
# Build graft's container images with docker or podman, whichever works here.
#
#   docker/build.sh                    # runtime and builder
#   docker/build.sh runtime builder runtime-gpu
#   docker/build.sh --base my.site/python:3.11 runtime
#   docker/build.sh --build-arg EXTRAS=serve,litert,parquet --tag graft-runtime-parquet runtime
#
# The base image is a build argument (BASE). Without --base the Dockerfile's own
# base is used when the engine has it or can pull it; where no registry answers
# (an air-gapped site), the script makes a Debian base from the packages of the
# Debian mirror apt already uses (debootstrap + import) and builds on that.
#
# pip inside the build gets the host's pip settings (index URLs, find-links,
# constraints, timeout) and CA bundle as build secrets, so nothing about the
# site ends up in an image; podman also mounts the local folders those
# settings name, read-only, for the build only.
#
# Environment: GRAFT_ENGINE (docker|podman), GRAFT_DEBIAN_MIRROR (a Debian
# mirror URL for the made base; default: the one apt uses), GRAFT_DEBIAN_SUITE
# (default: bookworm, whose python3 is 3.11). With podman, CONTAINERS_CONF is
# set to docker/containers.conf when it is not set already (see that file).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
MADE_BASE="localhost/graft-base:${GRAFT_DEBIAN_SUITE:-bookworm}"

say() { echo "build.sh: $*" >&2; }
die() { say "$*"; exit 2; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

pick_engine() {
    if [ -n "${GRAFT_ENGINE:-}" ]; then echo "$GRAFT_ENGINE"; return; fi
    # a docker client without a daemon (or without permission to it) does not count
    if command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; then
        echo docker
    elif command -v podman >/dev/null 2>&1; then
        echo podman
    else
        die "neither a working docker nor podman was found; install one (Debian: apt-get install podman runc)"
    fi
}

has_image() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

try_pull() {
    say "pulling $1 (30 s at most)"
    timeout 30 "$ENGINE" pull -q "$1" >/dev/null 2>&1
}

debian_mirror() {
    if [ -n "${GRAFT_DEBIAN_MIRROR:-}" ]; then echo "$GRAFT_DEBIAN_MIRROR"; return; fi
    # the first Debian archive (not security) that apt's sources name, one-line or deb822 style
    local url
    url=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' \
          | grep -v -e security -e updates | head -n 1 || true)
    if [ -z "$url" ]; then
        url=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '$1 == "URIs:" { print $2 }' \
              | grep -v security | head -n 1 || true)
    fi
    [ -n "$url" ] || die "no Debian mirror found in apt's sources; set GRAFT_DEBIAN_MIRROR"
    echo "$url"
}

make_debian_base() {
    local suite="${GRAFT_DEBIAN_SUITE:-bookworm}" mirror dir
    command -v debootstrap >/dev/null 2>&1 \
        || die "no registry answers and debootstrap is missing; install it (apt-get install debootstrap) or pass --base"
    [ "$(id -u)" = 0 ] || die "making a base with debootstrap needs root; run as root or pass --base"
    mirror=$(debian_mirror)
    dir=$(mktemp -d "${TMPDIR:-/var/tmp}/graft-base.XXXXXX")
    say "no registry answers: making $MADE_BASE with debootstrap from $mirror (about a minute)"
    debootstrap --variant=minbase --include=python3,python3-venv "$suite" "$dir/root" "$mirror" \
        > "$dir/debootstrap.log" 2>&1 || { tail -n 20 "$dir/debootstrap.log" >&2; die "debootstrap failed"; }
    # A mirror may be a dated snapshot, whose Release files are past their Valid-Until date.
    echo 'Acquire::Check-Valid-Until "false";' > "$dir/root/etc/apt/apt.conf.d/99graft-snapshot"
    # What Debian's slim images leave out: documentation, manuals, translations, apt's caches.
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
        > "$dir/root/etc/dpkg/dpkg.cfg.d/90graft-slim"
    find "$dir/root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
    rm -rf "$dir/root"/usr/share/{man,info,locale}/* "$dir/root"/var/cache/apt/* "$dir/root"/var/lib/apt/lists/*
    tar -C "$dir/root" -c . | "$ENGINE" import --change 'CMD ["/bin/bash"]' - "$MADE_BASE" >/dev/null
    rm -rf "$dir"
    say "made $MADE_BASE"
}

# The base for one image: --base, else the Dockerfile's default if present or pullable, else the made base.
resolve_base() {
    local default="$1"
    if [ -n "$BASE" ]; then echo "$BASE"; return; fi
    if has_image "$default" || try_pull "$default"; then echo "$default"; return; fi
    if has_image "$MADE_BASE"; then
        say "$default is not here and no registry answers: using $MADE_BASE, made earlier"
    else
        make_debian_base
    fi
    echo "$MADE_BASE"
}

pip_setting() {  # $1: pip option name; the environment wins over pip's config files, as in pip
    local env line
    env="PIP_$(echo "$1" | tr 'a-z-' 'A-Z_')"
    if [ -n "${!env:-}" ]; then echo "${!env}"; return; fi
    line=$(grep -E "^(global|install)\.$1=" <<< "$PIP_CONFIG" | tail -n 1 || true)
    line="${line#*=}"; line="${line#\'}"; echo "${line%\'}"
}

# Writes the build secrets (pip.conf, ca.pem) into $SECRETS; fills MOUNTS with local folders to lend.
prepare_pip() {
    PIP_CONFIG=""  # what `pip config list` says: global.KEY='VALUE', one a line
    for candidate in "python3 -m pip" "pip3" "pip"; do
        if $candidate --version >/dev/null 2>&1; then PIP_CONFIG=$($candidate config list 2>/dev/null || true); break; fi
    done
    : > "$SECRETS/pip.conf"
    echo "[global]" >> "$SECRETS/pip.conf"
    local key value word path kept PASSED=""
    for key in index-url extra-index-url find-links trusted-host timeout default-timeout constraint; do
        value=$(pip_setting "$key")
        kept=""
        for word in $value; do
            path="${word#file://}"
            if [ "${path#/}" != "$path" ]; then  # a local folder or file: podman lends it, read-only
                [ "$ENGINE" = podman ] && [ -e "$path" ] || continue
                # an index's pages (.../simple) link to files beside it: lend its parent
                [ "$(basename "$path")" != simple ] || path=$(dirname "$path")
                MOUNTS+=(-v "$path:$path:ro")
            fi
            kept="$kept $word"
        done
        [ -z "$kept" ] || { echo "$key =$kept" >> "$SECRETS/pip.conf"; PASSED="$PASSED $key"; }
    done
    say "pip settings passed to the build:${PASSED:- none} (and $((${#MOUNTS[@]} / 2)) local path(s) lent read-only)"
    local ca
    ca="${PIP_CERT:-$(pip_setting cert)}"
    for candidate in "$ca" "${REQUESTS_CA_BUNDLE:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
        if [ -n "$candidate" ] && [ -s "$candidate" ]; then cp "$candidate" "$SECRETS/ca.pem"; return; fi
    done
    : > "$SECRETS/ca.pem"  # none here: pip keeps its own bundle
}

build_one() {
    local name="$1" default base tag dockerfile="$HERE/$1.Dockerfile"
    [ -f "$dockerfile" ] || die "unknown image '$name'; choose from: runtime builder runtime-gpu"
    default=$(sed -n 's/^ARG BASE=//p' "$dockerfile" | head -n 1)
    base=$(resolve_base "$default")
    if [ "$name" = runtime-gpu ] && [ "$base" = "$MADE_BASE" ]; then
        say "runtime-gpu: its CUDA base is not reachable, so this builds its steps on $base," \
            "which has no CUDA libraries (onnxruntime-gpu there runs on the CPU only); pass --base" \
            "with a CUDA 13 + cuDNN 9 image to build the real one"
    fi
    tag="${TAG:-graft-$name}"
    local args=(build -f "$dockerfile" -t "$tag:$VERSION" -t "$tag:latest"
                --build-arg "BASE=$base" --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION"
                --build-arg "SOURCE=$SOURCE"
                --secret "id=pipconf,src=$SECRETS/pip.conf" --secret "id=ca,src=$SECRETS/ca.pem"
                "${BUILD_ARGS[@]}")
    if [ "$ENGINE" = podman ]; then
        # docker format keeps HEALTHCHECK; host network avoids NAT rules; never reach for a registry
        args+=(--format docker --network host --pull=never --layers "${MOUNTS[@]}")
    else
        args+=(--network host)
    fi
    say "building $tag:$VERSION from $base with $ENGINE"
    local started=$SECONDS
    (cd "$ROOT" && "$ENGINE" "${args[@]}" .)
    say "built $tag:$VERSION in $((SECONDS - started)) s"
}

BASE="${GRAFT_BASE:-}"
TAG=""
BUILD_ARGS=()
MOUNTS=()
IMAGES=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage ;;
        --base) BASE="$2"; shift 2 ;;
        --tag) TAG="$2"; shift 2 ;;
        --build-arg) BUILD_ARGS+=(--build-arg "$2"); shift 2 ;;
        --engine) GRAFT_ENGINE="$2"; shift 2 ;;
        -*) say "unknown option $1"; usage 2 ;;
        *) IMAGES+=("$1"); shift ;;
    esac
done
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=(runtime builder)
[ -z "$TAG" ] || [ ${#IMAGES[@]} = 1 ] || die "--tag names one image; build the others separately"

ENGINE=$(pick_engine)
if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ]; then
    export CONTAINERS_CONF="$HERE/containers.conf"
fi
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n 1)
REVISION=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
SOURCE=$(git -C "$ROOT" remote get-url origin 2>/dev/null | grep '^https://' || true)
SECRETS=$(mktemp -d)
trap 'rm -rf "$SECRETS"' EXIT
prepare_pip
for image in "${IMAGES[@]}"; do build_one "$image"; done
