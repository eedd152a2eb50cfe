"""The image matrix: which container image serves each engine on each accelerator.

Each engine's module (``turnout.resolver.engines.<engine>``) names its image per accelerator; the
matrix is derived from the engine registry. The operator's default config takes its images from here
(``default_images``), the build script (``scripts/build-image.sh``) looks up
an image's Dockerfile here, and ``tests/images`` proves every entry has a
Dockerfile under ``images/`` and every Dockerfile there has an entry.

Metal has no image: Linux containers cannot reach Metal, so Apple silicon
hosts run the shim natively through the host agent, which maps these image
names to local environments. Those entries carry ``HOST_AGENT`` instead of a
Dockerfile folder.

``python -m turnout.images`` prints the matrix; ``--dockerfile NAME``,
``--names``, ``--version`` and ``--registry`` print what the build script needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from turnout.resolver import engines

REGISTRY = "ghcr.io/turnout-dev"
VERSION = "0.1.0"
#: Folder marker for images the host agent provides natively (no Dockerfile).
HOST_AGENT = "host-agent"
#: The port every shim image exposes (the operator renders ``--port`` to match).
SHIM_PORT = 8000


@dataclass(frozen=True)
class ImageSpec:
    """One image: its repository name and the folder with its Dockerfile."""

    name: str
    dockerfile_dir: str

    def ref(self, registry: str = REGISTRY, tag: str = VERSION) -> str:
        """The full image reference, e.g. ``ghcr.io/turnout-dev/llamacpp-cpu:0.1.0``."""
        return f"{registry.rstrip('/')}/{self.name}:{tag}"

    @property
    def host_agent(self) -> bool:
        """True when the host agent serves this natively and no container image exists."""
        return self.dockerfile_dir == HOST_AGENT

    @property
    def dockerfile(self) -> str | None:
        """The Dockerfile's path relative to the repository root (None for host-agent entries)."""
        if self.host_agent:
            return None
        if self.dockerfile_dir in ("", "."):
            return "Dockerfile"
        return f"{self.dockerfile_dir}/Dockerfile"


def image_matrix(registry: Iterable[engines.Engine]) -> dict[tuple[str, str], ImageSpec]:
    """(engine, accelerator) -> image, from the image name each engine module declares per accelerator.

    An image is built from ``images/<name>/Dockerfile``; on metal the host agent provides it natively.
    """
    return {
        (engine.name, accel): ImageSpec(on.image, HOST_AGENT if accel == "metal" else f"images/{on.image}")
        for engine in registry
        for accel, on in engine.on.items()
    }


#: (engine, accelerator) -> image. Accelerators: nvidia, ascend, metal, cpu.
IMAGE_MATRIX: dict[tuple[str, str], ImageSpec] = image_matrix(engines.REGISTRY)

OPERATOR_IMAGE = ImageSpec("operator", ".")


def default_images(registry: str = REGISTRY, tag: str = VERSION) -> dict[str, dict[str, str]]:
    """``{engine: {accelerator: image ref}}`` for the operator's default config."""
    out: dict[str, dict[str, str]] = {}
    for (engine, accel), spec in sorted(IMAGE_MATRIX.items()):
        out.setdefault(engine, {})[accel] = spec.ref(registry, tag)
    return out


def container_images() -> list[ImageSpec]:
    """Every image that has a Dockerfile (engine images and the operator), sorted by name."""
    specs = {s.name: s for s in IMAGE_MATRIX.values() if not s.host_agent}
    specs[OPERATOR_IMAGE.name] = OPERATOR_IMAGE
    return [specs[n] for n in sorted(specs)]


def image_by_name(name: str) -> ImageSpec:
    """The image called ``name``; KeyError names the images that exist."""
    for spec in [*IMAGE_MATRIX.values(), OPERATOR_IMAGE]:
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in container_images())
    raise KeyError(f"no image named {name!r} (images with a Dockerfile: {known})")


def main(argv: list[str] | None = None) -> int:
    """Print the matrix, or one image's Dockerfile path with ``--dockerfile NAME``."""
    parser = argparse.ArgumentParser(prog="python -m turnout.images", description=__doc__.split("\n")[0])
    parser.add_argument("--dockerfile", metavar="NAME", help="print the Dockerfile path of image NAME")
    parser.add_argument("--names", action="store_true", help="print the names of buildable images")
    parser.add_argument("--version", action="store_true", help="print the default image tag")
    parser.add_argument("--registry", action="store_true", help="print the default registry")
    args = parser.parse_args(argv)
    if args.version:
        print(VERSION)
        return 0
    if args.registry:
        print(REGISTRY)
        return 0
    if args.dockerfile:
        try:
            spec = image_by_name(args.dockerfile)
        except KeyError as exc:
            print(exc.args[0], file=sys.stderr)
            return 2
        if spec.dockerfile is None:
            print(f"{spec.name} has no container image: the host agent serves it natively", file=sys.stderr)
            return 2
        print(spec.dockerfile)
        return 0
    if args.names:
        print("\n".join(s.name for s in container_images()))
        return 0
    for (engine, accel), spec in sorted(IMAGE_MATRIX.items()):
        where = spec.dockerfile or "(host agent, no image)"
        print(f"{engine:<13} {accel:<7} {spec.ref():<45} {where}")
    print(f"{'operator':<13} {'-':<7} {OPERATOR_IMAGE.ref():<45} {OPERATOR_IMAGE.dockerfile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
