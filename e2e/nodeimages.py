"""The project's images on a real node: built from this checkout, loaded into the node's container runtime.

What ``kind load`` does for kind, done for a node whose containerd runs on this machine: each image is built
with ``scripts/build-image.sh`` (buildah) under a tag derived from the content of what goes into it, so an
unchanged checkout reuses what an earlier run built and loaded, and a changed one gets new tags; then it is
exported as a Docker archive and imported into containerd's ``k8s.io`` namespace.

``TURNOUT_E2E_IMAGE_LOADER`` replaces the import with a command of your own (the archive's path is appended),
e.g. ``kind load image-archive --name NAME`` or a script that copies it to a remote node.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = os.environ.get("TURNOUT_REGISTRY", "ghcr.io/turnout-dev")
#: What goes into an image: a change to any of these makes a new tag.
INPUTS = ("operator", "images", "requirements", "pyproject.toml", "README.md", "Dockerfile", "scripts/build-image.sh")
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
BUILDAH = ["buildah", f"--storage-driver={os.environ.get('TURNOUT_STORAGE_DRIVER', 'vfs')}"]


def content_tag() -> str:
    """``e2e-<hash>`` of every tracked or untracked (not ignored) file under :data:`INPUTS`."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z", "--", *INPUTS], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    digest = hashlib.sha256()
    for name in sorted(n for n in listed if n):
        path = ROOT / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"e2e-{digest.hexdigest()[:12]}"


def loader() -> list[str] | None:
    """The command that imports a Docker archive into the node's runtime, or None when there is none here."""
    custom = os.environ.get("TURNOUT_E2E_IMAGE_LOADER")
    if custom:
        return shlex.split(custom)
    if shutil.which("ctr") and os.path.exists(CONTAINERD_SOCKET):
        return ["ctr", "--address", CONTAINERD_SOCKET, "-n", "k8s.io", "images", "import"]
    return None


def problem() -> str | None:
    """Why images cannot be built and loaded here, or None."""
    if shutil.which("buildah") is None:
        return "buildah is not installed (`make images-smoke` installs it with mmdebstrap)"
    if loader() is None:
        return (f"no container runtime to load images into: neither ctr with {CONTAINERD_SOCKET} nor "
                "TURNOUT_E2E_IMAGE_LOADER")
    return None


def _run(args: list[str], *, timeout: float) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{shlex.join(args)} exited {proc.returncode}:\n{proc.stderr[-5000:]}")
    return proc.stdout


def built(ref: str) -> bool:
    return subprocess.run([*BUILDAH, "inspect", "--type", "image", ref], capture_output=True).returncode == 0


def in_runtime(ref: str) -> bool:
    """Whether containerd on this machine has ``ref`` (False where a custom loader is used: it always loads)."""
    if os.environ.get("TURNOUT_E2E_IMAGE_LOADER"):
        return False
    out = subprocess.run(["ctr", "--address", CONTAINERD_SOCKET, "-n", "k8s.io", "images", "ls", "-q"],
                         capture_output=True, text=True).stdout.split()
    return ref in out


@dataclass
class Images:
    """The images of one run and what getting them cost (seconds per image and step)."""

    tag: str
    refs: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def ensure(self, name: str, *, tag: str | None = None, build_args: tuple[str, ...] = ()) -> str:
        """Build ``name`` (unless built) and load it into the node's runtime (unless there); its reference."""
        ref = f"{REGISTRY}/{name}:{tag or self.tag}"
        if not built(ref):
            start = time.monotonic()
            extra = [a for arg in build_args for a in ("--build-arg", arg)]
            _run([str(ROOT / "scripts/build-image.sh"), name, "--builder", "buildah", "--tag", ref, *extra],
                 timeout=3600)
            self.seconds[f"build {name}"] = time.monotonic() - start
        if not in_runtime(ref):
            start = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="turnout-e2e-image-") as tmp:
                archive = Path(tmp) / "image.tar"
                _run([*BUILDAH, "push", ref, f"docker-archive:{archive}:{ref}"], timeout=1200)
                command = loader()
                assert command is not None
                _run([*command, str(archive)], timeout=1200)
            self.seconds[f"load {name}"] = time.monotonic() - start
        self.refs[name] = ref
        return ref


def tag_in_runtime(source: str, target: str) -> None:
    """A second name for an image containerd has (``ctr images tag``)."""
    _run(["ctr", "--address", CONTAINERD_SOCKET, "-n", "k8s.io", "images", "tag", "--force", source, target],
         timeout=60)


def untag_in_runtime(ref: str) -> None:
    subprocess.run(["ctr", "--address", CONTAINERD_SOCKET, "-n", "k8s.io", "images", "rm", ref],
                   capture_output=True)
