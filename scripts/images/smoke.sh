#!/usr/bin/env bash
# Build the CPU llama.cpp image and the operator image with buildah and smoke-test
# them with `buildah run` (no Docker engine, no registry needed):
#
#   1. each image's config: non-root numeric user, one exposed port, OCI labels,
#      the right entrypoint;
#   2. `turnout-shim --help` in both images, `turnout --help` and
#      `turnout operator --help` in the operator image;
#   3. the llama.cpp image serves builtin://tiny-llama.gguf, the tiny model baked
#      into it at build time (nothing built on the host, nothing mounted), with
#      the LoRA adapter builtin://tiny-lora baked beside it (--lora-modules), and
#      answers one /v1/chat/completions request for each from the host; a
#      built-in model it does not bake fails with an error that says which it holds.
#
# Usage: scripts/images/smoke.sh [--no-build] [--keep-cache] [--transformers]
#   --no-build     test the images already built (tag $TURNOUT_SMOKE_TAG)
#   --transformers also build transformers-cpu and have it serve builtin://tiny-llama
#                  (baked into it); left out of CI for its build time (docs/images.md)
#   --keep-cache   do not remove untagged images (earlier builds) afterwards
# Environment: TURNOUT_SMOKE_TAG (default: smoke), and what scripts/build-image.sh
# reads.
#
# Needs: buildah, mmdebstrap (Debian packages) and, the first time, PyPI and a
# Debian mirror. Prints how long each part took.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TAG="${TURNOUT_SMOKE_TAG:-smoke}"
BAH=(buildah "--storage-driver=${TURNOUT_STORAGE_DRIVER:-vfs}")
BUILD=1 KEEP_CACHE=0 TRANSFORMERS=0
for arg in "$@"; do
    case "$arg" in
        --no-build) BUILD=0 ;;
        --transformers) TRANSFORMERS=1 ;;
        --keep-cache) KEEP_CACHE=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "smoke: unknown argument $arg" >&2; exit 2 ;;
    esac
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/turnout-smoke.XXXXXX")"
CONTAINERS=()
SERVER_PID=""
remove_containers() {
    for c in "${CONTAINERS[@]}"; do "${BAH[@]}" rm "$c" >/dev/null 2>&1 || true; done
    CONTAINERS=()
}
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    remove_containers
    rm -rf "$WORK"
}
trap cleanup EXIT

T0=$SECONDS
TIMES=()
step() { printf '\n=== smoke: %s\n' "$*" >&2; }
timed() { TIMES+=("$(printf '%-34s %4ss' "$1" "$2")"); }
fail() { printf 'smoke: FAIL: %s\n' "$*" >&2; exit 1; }

REGISTRY="${TURNOUT_REGISTRY:-ghcr.io/turnout-dev}"
LLAMA_REF="$REGISTRY/llamacpp-cpu:$TAG"
OPERATOR_REF="$REGISTRY/operator:$TAG"
TRANSFORMERS_REF="$REGISTRY/transformers-cpu:$TAG"
IMAGES=(llamacpp-cpu operator)
[ "$TRANSFORMERS" = 1 ] && IMAGES+=(transformers-cpu)

# --- build ---------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
    for name in "${IMAGES[@]}"; do
        step "build $name"
        t=$SECONDS
        "$ROOT/scripts/build-image.sh" "$name" --builder buildah --tag "$TAG" 2> >(tee "$WORK/build-$name.log" >&2) >/dev/null
        timed "build $name" $((SECONDS - t))
    done
    # The cached local base is one tarball (mmdebstrap once wrote a directory tree there).
    cache="${TURNOUT_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/turnout/images}"
    for base in "$cache"/*.tar; do
        [ -e "$base" ] || continue
        [ -f "$base" ] && tar -tf "$base" ./usr/bin/python3 >/dev/null 2>&1 \
            || fail "the cached local base $base is not a tarball holding /usr/bin/python3"
    done
fi

# --- image config ------------------------------------------------------------------
check_config() { # ref entrypoint port
    "${BAH[@]}" inspect --type image "$1" > "$WORK/inspect.json" || fail "$1 is not in buildah's storage (build it first)"
    python3 - "$WORK/inspect.json" "$1" "$2" "$3" <<'PYEOF'
import json, sys
path, ref, entrypoint, port = sys.argv[1:]
cfg = json.load(open(path))["OCIv1"]["config"]
errors = []
user = cfg.get("User", "")
if not user.split(":")[0].isdigit() or user.split(":")[0] == "0":
    errors.append(f"user is {user!r}, want a non-root numeric uid")
if cfg.get("Entrypoint") != [entrypoint]:
    errors.append(f"entrypoint is {cfg.get('Entrypoint')}, want [{entrypoint!r}]")
ports = sorted(cfg.get("ExposedPorts") or {})
if ports != [f"{port}/tcp"]:
    errors.append(f"exposed ports are {ports}, want ['{port}/tcp']")
labels = cfg.get("Labels") or {}
for key in ("title", "description", "source", "licenses", "version", "revision", "base.name"):
    if not labels.get(f"org.opencontainers.image.{key}"):
        errors.append(f"label org.opencontainers.image.{key} is missing")
if errors:
    sys.exit(f"{ref}: " + "; ".join(errors))
print(f"{ref}: user {user}, entrypoint {entrypoint}, port {port}, "
      f"version {labels['org.opencontainers.image.version']}, revision {labels['org.opencontainers.image.revision'][:12]}")
PYEOF
}
step "image config"
check_config "$LLAMA_REF" turnout-shim 8000 || fail "llamacpp-cpu image config"
check_config "$OPERATOR_REF" turnout 8080 || fail "operator image config"
if [ "$TRANSFORMERS" = 1 ]; then
    check_config "$TRANSFORMERS_REF" turnout-shim 8000 || fail "transformers-cpu image config"
fi

# --- --help --------------------------------------------------------------------------
new_container() { # VAR label ref: a working container for ref, its name in VAR
    local c
    c="$("${BAH[@]}" from --pull-never --name "smoke-$2-$$" "$3")"
    CONTAINERS+=("$c")
    printf -v "$1" '%s' "$c"
}
# Working containers of earlier runs that were killed (each one a full copy on vfs).
while read -r name; do
    pid="${name##*-}"
    kill -0 "$pid" 2>/dev/null || "${BAH[@]}" rm "$name" >/dev/null 2>&1 || true
done < <("${BAH[@]}" containers --all --format '{{.ContainerName}}' | grep -E '^smoke-(llamacpp|operator|transformers)-[0-9]+$' || true)
t=$SECONDS
step "--help in the images"
new_container LLAMA_CTR llamacpp "$LLAMA_REF"
new_container OP_CTR operator "$OPERATOR_REF"
"${BAH[@]}" run --isolation chroot "$LLAMA_CTR" -- id -u | grep -qx 10001 || fail "llamacpp-cpu does not run as uid 10001"
"${BAH[@]}" run --isolation chroot "$LLAMA_CTR" -- turnout-shim --help > "$WORK/help.txt" || fail "turnout-shim --help failed in llamacpp-cpu"
grep -q -- "--engine" "$WORK/help.txt" || fail "turnout-shim --help printed no --engine option"
"${BAH[@]}" run --isolation chroot "$LLAMA_CTR" -- python3 -c "import xllamacpp, turnout.shim.backends.llamacpp" \
    || fail "llamacpp-cpu cannot import xllamacpp and the shim's llama.cpp backend"
"${BAH[@]}" run --isolation chroot "$OP_CTR" -- turnout --help > "$WORK/op-help.txt" || fail "turnout --help failed in the operator image"
grep -q "plan" "$WORK/op-help.txt" || fail "turnout --help lists no 'plan' command"
"${BAH[@]}" run --isolation chroot "$OP_CTR" -- turnout operator --help >/dev/null \
    || fail "turnout operator --help failed: the controller does not import with the [operator] extra"
"${BAH[@]}" run --isolation chroot "$OP_CTR" -- turnout-shim --help >/dev/null || fail "turnout-shim --help failed in the operator image"
echo "--help answers in both images" >&2
timed "--help checks" $((SECONDS - t))

# --- the images serve their baked tiny model ------------------------------------------------
serve_and_chat() { # container image engine model-uri model-format [adapter]: serve it (and the baked LoRA
    # adapter builtin://ADAPTER as the model ADAPTER), ask one chat question of each
    local ctr="$1" image="$2" engine="$3" uri="$4" format="$5" adapter="${6:-}" port served=tiny-chat name
    local asked="$served" lora=()
    for name in "${uri#builtin://}" $adapter; do
        "${BAH[@]}" run --isolation chroot "$ctr" -- sh -c "test -e \"\$TURNOUT_BUILTIN_DIR/$name\"" \
            || fail "$image has no baked $name under \$TURNOUT_BUILTIN_DIR"
    done
    if [ -n "$adapter" ]; then
        lora=(--enable-lora --lora-modules "$adapter=builtin://$adapter")
        asked="$served,$adapter"
    fi
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    # chroot isolation shares the host's network: the server is reachable on 127.0.0.1.
    setsid "${BAH[@]}" run --isolation chroot "$ctr" -- \
        turnout-shim --engine "$engine" --model "$uri" --served-model-name "$served" \
        --model-format "$format" --host 127.0.0.1 --port "$port" "${lora[@]}" > "$WORK/server-$image.log" 2>&1 &
    SERVER_PID=$!
    python3 - "$port" "$asked" "$SERVER_PID" <<'PYEOF' || { tail -n 40 "$WORK/server-$image.log" >&2; fail "$image did not answer a chat request"; }
import json, os, sys, time, urllib.error, urllib.request
port, asked, pid = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
base = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + 300
while True:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
            if r.status == 200:
                break
    except (urllib.error.URLError, OSError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("the server exited before it was healthy")
    if time.monotonic() > deadline:
        sys.exit("the server was not healthy within 300 s")
    time.sleep(1)
for served in asked:  # the model, then the LoRA adapter if one is served
    body = {"model": served, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
            "temperature": 0}
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        reply = json.load(r)
    choice = reply["choices"][0]
    content = choice["message"]["content"]
    assert choice["message"]["role"] == "assistant", reply
    assert isinstance(content, str) and content, reply
    assert reply["model"] == served, reply
    assert reply["usage"]["completion_tokens"] >= 1, reply
    print(f"chat answered by {reply['model']}: {content!r} (finish_reason {choice['finish_reason']})", file=sys.stderr)
PYEOF
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    # The shim took the baked copy: the image has no builder dependencies to make one.
    grep -q "model $uri is at /opt/turnout/builtin/${uri#builtin://}\$" "$WORK/server-$image.log" \
        || { tail -n 20 "$WORK/server-$image.log" >&2; fail "$image did not serve the model baked into it"; }
}

step "llamacpp-cpu serves builtin://tiny-llama.gguf and its LoRA adapter builtin://tiny-lora, baked into the image"
t=$SECONDS
# A built-in model the image does not bake: the error names what it has (no torch to build it).
"${BAH[@]}" run --isolation chroot "$LLAMA_CTR" -- python3 -c \
    'from turnout.sources import locate; locate("builtin://tiny-llama")' > "$WORK/unbaked.txt" 2>&1 \
    && fail "builtin://tiny-llama (not baked into llamacpp-cpu) resolved"
grep -q "holds tiny-llama.gguf" "$WORK/unbaked.txt" \
    || { cat "$WORK/unbaked.txt" >&2; fail "the error for a model the image does not bake does not say what it holds"; }
# The adapter is the baked PEFT folder, converted to a GGUF LoRA when the shim starts (the image has no
# torch or peft to build one).
serve_and_chat "$LLAMA_CTR" llamacpp-cpu llama.cpp builtin://tiny-llama.gguf gguf tiny-lora
timed "chat smoke (llamacpp-cpu)" $((SECONDS - t))

if [ "$TRANSFORMERS" = 1 ]; then
    step "transformers-cpu serves builtin://tiny-llama, baked into the image"
    t=$SECONDS
    new_container TF_CTR transformers "$TRANSFORMERS_REF"
    serve_and_chat "$TF_CTR" transformers-cpu transformers builtin://tiny-llama pytorch
    timed "chat smoke (transformers-cpu)" $((SECONDS - t))
fi

remove_containers

# --- storage hygiene -------------------------------------------------------------------------
# vfs keeps every image as full copies: drop the untagged images earlier runs left
# behind (with vfs the build keeps no per-instruction cache, so nothing of value).
if [ "$BUILD" = 1 ] && [ "$KEEP_CACHE" = 0 ] && [ "${TURNOUT_STORAGE_DRIVER:-vfs}" = vfs ] \
    && [ "${TURNOUT_LAYERS:-false}" = false ]; then
    step "remove untagged images"
    "${BAH[@]}" rmi --prune >/dev/null 2>&1 || true
fi

printf '\nsmoke: OK in %ss\n' $((SECONDS - T0)) >&2
printf '  %s\n' "${TIMES[@]}" >&2
