#!/usr/bin/env bash
# Build one turnout container image: scripts/build-image.sh NAME [options]
#
# NAME is an image from operator/turnout/images.py (llamacpp-cpu, operator,
# vllm-cuda, ...; `scripts/build-image.sh --list` prints them). The build uses
# `docker build` when a Docker engine answers, else
# `buildah bud --isolation chroot --storage-driver vfs` (no daemon, no user
# namespaces: works inside an unprivileged CI container).
#
# Base image: each Dockerfile's `ARG BASE_IMAGE=` default is used when its
# registry answers. When it does not (an air-gapped CI that only reaches PyPI
# and Debian), the script builds a local Debian bookworm base with mmdebstrap
# (python3, python3-venv, python3-pip, ca-certificates), caches it, and passes
# it as `--build-arg BASE_IMAGE=...`. That stand-in is right for the CPU images
# (llamacpp-cpu, transformers-cpu, operator); GPU images need their vendor base.
#
# pip inside a buildah build reaches PyPI over the host's network (chroot
# isolation shares it) and trusts the host's CA bundle, mounted read-only at
# /etc/ssl/certs and named by the PIP_CERT build argument.
#
# Options:
#   --tag T          tag (default: the version in images.py) or a full reference
#                    (contains ':' or '/'); default reference REGISTRY/NAME:TAG
#   --base IMAGE     use IMAGE as the base (skips the reachability check)
#   --local-base     always use the local mmdebstrap base
#   --builder B      docker | buildah (default: docker if `docker info` works)
#   --build-arg K=V  passed on to the build (repeatable), e.g. TORCH_INDEX_URL=...
#   --volume SPEC    buildah only: bind-mount into every RUN (repeatable), e.g. a
#                    local wheel index: --volume /srv/wheels:/wheels:ro
#   --wheels DIR     buildah only: a folder of wheels mounted read-only at /wheels
#                    into every RUN and named by PIP_FIND_LINKS there, so pip
#                    finds wheels there as well as on PyPI (default: $PIP_FIND_LINKS
#                    when that is one folder, else /opt/wheels when it exists;
#                    --wheels none: no folder; only Dockerfiles that declare
#                    `ARG PIP_FIND_LINKS` get a default). When it holds the Dockerfile's
#                    CPU torch (torch-<TORCH_VERSION>+cpu-*.whl), the PyTorch index
#                    is not asked (TORCH_INDEX_URL=https://pypi.org/simple) unless
#                    --build-arg TORCH_INDEX_URL=... says otherwise
#   --no-cache       rebuild every layer
#   --list           print the image names and exit
# Environment:
#   TURNOUT_REGISTRY          registry prefix (default: ghcr.io/turnout-dev)
#   TURNOUT_IMAGE_CACHE       where the local base tarball is kept
#                                (default: ${XDG_CACHE_HOME:-~/.cache}/turnout/images)
#   TURNOUT_DEBIAN_MIRROR     Debian mirror for mmdebstrap (default: http://deb.debian.org/debian)
#   TURNOUT_STORAGE_DRIVER    buildah storage driver (default: vfs)
#   TURNOUT_HOST_CA           0 to not mount the host CA bundle into buildah builds
#   TURNOUT_LAYERS            true/false: buildah's per-instruction cache (default:
#                                false on vfs, where each cached step copies the whole tree)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
STORAGE_DRIVER_OPT="--storage-driver=${TURNOUT_STORAGE_DRIVER:-vfs}"
CACHE_DIR="${TURNOUT_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/turnout/images}"
MIRROR="${TURNOUT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
# What the local base holds; its hash names the cached base, so a change rebuilds it.
BASE_SUITE=bookworm
BASE_PACKAGES="python3,python3-venv,python3-pip,ca-certificates"
BASE_RECIPE_VERSION=1

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { printf 'build-image: error: %s\n' "$*" >&2; exit 1; }

images_py() { PYTHONPATH="$ROOT/operator${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m turnout.images "$@"; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; }

NAME="" TAG="" BASE="" LOCAL_BASE=0 BUILDER="" NO_CACHE=() EXTRA_ARGS=() VOLUMES=() WHEELS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG="${2:?--tag needs a value}"; shift 2 ;;
        --tag=*) TAG="${1#*=}"; shift ;;
        --base) BASE="${2:?--base needs a value}"; shift 2 ;;
        --base=*) BASE="${1#*=}"; shift ;;
        --local-base) LOCAL_BASE=1; shift ;;
        --builder) BUILDER="${2:?--builder needs docker or buildah}"; shift 2 ;;
        --builder=*) BUILDER="${1#*=}"; shift ;;
        --build-arg) EXTRA_ARGS+=(--build-arg "${2:?--build-arg needs K=V}"); shift 2 ;;
        --build-arg=*) EXTRA_ARGS+=(--build-arg "${1#*=}"); shift ;;
        --volume) VOLUMES+=(--volume "${2:?--volume needs SRC:DST[:ro]}"); shift 2 ;;
        --volume=*) VOLUMES+=(--volume "${1#*=}"); shift ;;
        --wheels) WHEELS="${2:?--wheels needs a folder or none}"; shift 2 ;;
        --wheels=*) WHEELS="${1#*=}"; shift ;;
        --no-cache) NO_CACHE=(--no-cache); shift ;;
        --list) images_py --names; exit 0 ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$NAME" ] || die "one image at a time (got $NAME and $1)"; NAME="$1"; shift ;;
    esac
done
[ -n "$NAME" ] || { usage; die "name an image: $(images_py --names | tr '\n' ' ')"; }

DOCKERFILE_REL="$(images_py --dockerfile "$NAME")" || exit 2
DOCKERFILE="$ROOT/$DOCKERFILE_REL"
[ -f "$DOCKERFILE" ] || die "$DOCKERFILE_REL is listed in images.py but does not exist"
VERSION="$(images_py --version)"
REGISTRY="${TURNOUT_REGISTRY:-$(images_py --registry)}"
case "$TAG" in
    "") REF="$REGISTRY/$NAME:$VERSION" ;;
    */*|*:*) REF="$TAG" ;;
    *) REF="$REGISTRY/$NAME:$TAG" ;;
esac
REVISION="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"

# --- builder -------------------------------------------------------------------
if [ -z "$BUILDER" ]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        BUILDER=docker
    elif command -v buildah >/dev/null 2>&1; then
        BUILDER=buildah
    else
        die "no Docker engine answers and buildah is not installed (Debian: apt-get install -y buildah)"
    fi
fi
case "$BUILDER" in
    docker) ;;
    buildah) command -v buildah >/dev/null 2>&1 || die "buildah is not installed (apt-get install -y buildah)" ;;
    *) die "--builder must be docker or buildah, not $BUILDER" ;;
esac
bah() { buildah "$STORAGE_DRIVER_OPT" "$@"; }

image_exists() {
    if [ "$BUILDER" = docker ]; then docker image inspect "$1" >/dev/null 2>&1
    else bah inspect --type image "$1" >/dev/null 2>&1; fi
}

# --- base image ------------------------------------------------------------------
DEFAULT_BASE="$(sed -n 's/^ARG BASE_IMAGE=\(.*\)$/\1/p' "$DOCKERFILE" | head -n 1)"
[ -n "$DEFAULT_BASE" ] || die "$DOCKERFILE_REL has no 'ARG BASE_IMAGE=' default"

registry_answers() {
    # A registry answers /v2/ with 200 or 401; no answer at all means unreachable.
    local ref="$1" host first
    first="${ref%%/*}"
    if [ "$first" != "$ref" ] && { [[ "$first" == *.* ]] || [[ "$first" == *:* ]] || [ "$first" = localhost ]; }; then
        host="$first"
    else
        host="registry-1.docker.io"
    fi
    [ "$host" = localhost ] && return 1
    "$PY" - "$host" <<'PYEOF'
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(f"https://{sys.argv[1]}/v2/", timeout=8)
except urllib.error.HTTPError:
    pass  # 401 Unauthorized: the registry is there
except Exception:
    sys.exit(1)
PYEOF
}

local_base() {
    # Build (once) and load (once per storage) a Debian base with python3 and venv/pip.
    local recipe hash tarball ref
    command -v mmdebstrap >/dev/null 2>&1 || die "no registry answers for $DEFAULT_BASE and mmdebstrap is not installed (apt-get install -y mmdebstrap)"
    recipe="v$BASE_RECIPE_VERSION $BASE_SUITE $BASE_PACKAGES $MIRROR"
    hash="$(printf '%s' "$recipe" | sha256sum | cut -c1-12)"
    ref="localhost/turnout-base:$BASE_SUITE-python3-$hash"
    if image_exists "$ref"; then
        log "local base $ref is cached"
        LOCAL_BASE_REF="$ref"; return
    fi
    mkdir -p "$CACHE_DIR"
    tarball="$CACHE_DIR/$BASE_SUITE-python3-$hash.tar"
    if [ ! -s "$tarball" ]; then
        log "making a local $BASE_SUITE base with mmdebstrap ($BASE_PACKAGES) -> $tarball"
        local start=$SECONDS
        # --format=tar: mmdebstrap picks the format from the file name otherwise, and
        # "*.part" made a directory tree, not one tarball.
        # shellcheck disable=SC2016  # "$1" is mmdebstrap's, expanded by its hook
        mmdebstrap --variant=minbase --include="$BASE_PACKAGES" \
            --aptopt='Acquire::Retries "3"' \
            --aptopt='APT::Install-Recommends "false"' \
            --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
            --format=tar "$BASE_SUITE" "$tarball.part" \
            "deb $MIRROR $BASE_SUITE main" \
            "deb $MIRROR $BASE_SUITE-updates main" \
            "deb ${MIRROR%/debian}/debian-security $BASE_SUITE-security main" >&2
        mv "$tarball.part" "$tarball"
        log "local base tarball made in $((SECONDS - start))s"
    fi
    log "loading $tarball as $ref"
    if [ "$BUILDER" = docker ]; then
        docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tarball" "$ref" >/dev/null
    else
        local ctr
        ctr="$(bah from scratch)"
        bah add "$ctr" "$tarball" / >/dev/null
        bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            --env LANG=C.UTF-8 --cmd '["python3"]' \
            --label org.opencontainers.image.description="turnout local base: Debian $BASE_SUITE minbase + $BASE_PACKAGES" \
            "$ctr"
        bah commit --rm --quiet "$ctr" "$ref" >/dev/null
    fi
    LOCAL_BASE_REF="$ref"
}

if [ -n "$BASE" ]; then
    BASE_REF="$BASE"
elif [ "$LOCAL_BASE" = 1 ]; then
    local_base; BASE_REF="$LOCAL_BASE_REF"
elif image_exists "$DEFAULT_BASE" || registry_answers "$DEFAULT_BASE"; then
    BASE_REF="$DEFAULT_BASE"
else
    log "the registry of $DEFAULT_BASE does not answer: using a local Debian base instead"
    case "$NAME" in
        llamacpp-cpu|transformers-cpu|operator) ;;
        *) log "warning: $NAME's vendor base ($DEFAULT_BASE) holds its engine and GPU stack; a Debian base only proves the Dockerfile builds" ;;
    esac
    local_base; BASE_REF="$LOCAL_BASE_REF"
fi

# --- build context: only what the images install, so caches key on real inputs --
CTX="$(mktemp -d "${TMPDIR:-/tmp}/turnout-ctx.XXXXXX")"
trap 'rm -rf "$CTX"' EXIT
(
    cd "$ROOT"
    files=(pyproject.toml README.md requirements operator "$DOCKERFILE_REL")
    [ "$(dirname "$DOCKERFILE_REL")" != . ] && files+=("$(dirname "$DOCKERFILE_REL")")
    [ -d images/common ] && files+=(images/common)
    [ -f LICENSE ] && files+=(LICENSE)
    tar -c --exclude='__pycache__' --exclude='*.pyc' --exclude='*.egg-info' "${files[@]}"
) | tar -x -C "$CTX"

ARGS=(--build-arg "BASE_IMAGE=$BASE_REF" --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION")
for var in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
    [ -n "${!var:-}" ] && ARGS+=(--build-arg "$var=${!var}")
done

# --- local wheels (pip --find-links) --------------------------------------------------
build_arg_given() { local a; for a in "${EXTRA_ARGS[@]}"; do [[ "$a" == "$1="* ]] && return 0; done; return 1; }
# Only Dockerfiles that declare `ARG PIP_FIND_LINKS` read the folder, and only those get
# one by default: with a CPU torch there, `torch==X` in a CUDA image would take it.
if [ -z "$WHEELS" ] && grep -q '^ARG PIP_FIND_LINKS' "$DOCKERFILE"; then
    if [ -n "${PIP_FIND_LINKS:-}" ] && [[ "$PIP_FIND_LINKS" != *" "* ]] && [ -d "$PIP_FIND_LINKS" ]; then
        WHEELS="$PIP_FIND_LINKS"
    elif [ -d /opt/wheels ]; then
        WHEELS=/opt/wheels
    fi
    if [ -n "$WHEELS" ] && [ "$BUILDER" = docker ]; then
        log "not using the wheel folder $WHEELS: docker build mounts no folders (use buildah, or --build-arg TORCH_INDEX_URL=...)"
        WHEELS=""
    fi
fi
case "$WHEELS" in
    ""|none) WHEELS="" ;;
    *)
        [ -d "$WHEELS" ] || die "--wheels $WHEELS: no such folder"
        [ "$BUILDER" = buildah ] || die "--wheels needs buildah (docker build mounts no folders)"
        grep -q '^ARG PIP_FIND_LINKS' "$DOCKERFILE" \
            || log "warning: $DOCKERFILE_REL declares no ARG PIP_FIND_LINKS: its pip does not look in $WHEELS"
        WHEELS="$(cd "$WHEELS" && pwd)"
        VOLUMES+=(--volume "$WHEELS:/wheels:ro")
        ARGS+=(--build-arg PIP_FIND_LINKS=/wheels)
        torch_version="$(sed -n 's/^ARG TORCH_VERSION=\(.*\)$/\1/p' "$DOCKERFILE" | head -n 1)"
        for a in "${EXTRA_ARGS[@]}"; do [[ "$a" == TORCH_VERSION=* ]] && torch_version="${a#*=}"; done
        if [ -n "$torch_version" ] && ! build_arg_given TORCH_INDEX_URL \
            && compgen -G "$WHEELS/torch-$torch_version+cpu-*.whl" >/dev/null; then
            log "torch $torch_version+cpu is in $WHEELS: PyPI stands in for the PyTorch CPU index"
            ARGS+=(--build-arg TORCH_INDEX_URL=https://pypi.org/simple)
        fi
        log "pip also finds wheels in $WHEELS (mounted read-only at /wheels)"
        ;;
esac

ARGS+=("${EXTRA_ARGS[@]}")
[ "$BUILDER" = docker ] && [ ${#VOLUMES[@]} -gt 0 ] && die "--volume needs buildah (docker build mounts no volumes)"

log "building $REF from $DOCKERFILE_REL with $BUILDER (base $BASE_REF)"
start=$SECONDS
if [ "$BUILDER" = docker ]; then
    docker build "${NO_CACHE[@]}" "${ARGS[@]}" -f "$CTX/$DOCKERFILE_REL" -t "$REF" "$CTX" >&2
else
    if [ "${TURNOUT_HOST_CA:-1}" != 0 ] && [ -s "$HOST_CA_BUNDLE" ]; then
        ARGS+=(--volume /etc/ssl/certs:/etc/ssl/certs:ro --build-arg "PIP_CERT=$HOST_CA_BUNDLE")
    fi
    # vfs stores every layer as a full copy of the tree, so caching each instruction
    # costs more (10-20 s a step, gigabytes of storage) than it saves: one commit per
    # stage instead. Other storage drivers keep the per-instruction cache.
    layers=true
    [ "${STORAGE_DRIVER_OPT#*=}" = vfs ] && layers=false
    layers="${TURNOUT_LAYERS:-$layers}"
    bah bud --isolation chroot --layers="$layers" "${NO_CACHE[@]}" "${ARGS[@]}" "${VOLUMES[@]}" \
        -f "$CTX/$DOCKERFILE_REL" -t "$REF" "$CTX" >&2
fi
log "built $REF in $((SECONDS - start))s"
echo "$REF"
