"""What each image bakes (``ARG BUILTIN_MODELS`` of its Dockerfile) is what docs/images.md says, only names
``turnout.sources`` knows, and carries the tiny LoRA adapter wherever it carries a tiny-llama model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from turnout.images import IMAGE_MATRIX, OPERATOR_IMAGE
from turnout.sources import BUILTIN, BUILTIN_ADAPTERS

ROOT = Path(__file__).resolve().parents[2]
#: the tiny chat models that builtin://tiny-lora is an adapter of
TINY_LLAMA = {"tiny-llama", "tiny-llama.gguf"}


def baked(dockerfile: Path) -> list[str]:
    """The names the Dockerfile's ``BUILTIN_MODELS`` build argument bakes by default (none without one)."""
    found = re.findall(r'^ARG BUILTIN_MODELS="([^"]*)"', dockerfile.read_text(), flags=re.MULTILINE)
    assert len(found) <= 1, f"{dockerfile}: BUILTIN_MODELS set {len(found)} times"
    return found[0].split() if found else []


def documented() -> dict[str, set[str]]:
    """docs/images.md's table of what each image bakes: image name -> builtin:// names."""
    text = (ROOT / "docs" / "images.md").read_text()
    table = text[text.index("| image | bakes |"):]
    rows = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = set(re.findall(r"`builtin://([\w.-]+)`", cells[1]))
    return rows


IMAGES = sorted({spec.name: ROOT / spec.dockerfile for spec in [*IMAGE_MATRIX.values(), OPERATOR_IMAGE]
                 if not spec.host_agent}.items())


@pytest.mark.parametrize(("name", "dockerfile"), IMAGES, ids=[name for name, _ in IMAGES])
def test_baked_builtins_are_known_documented_and_carry_the_tiny_lora(name: str, dockerfile: Path) -> None:
    names = baked(dockerfile)
    assert set(names) <= set(BUILTIN), f"{dockerfile}: unknown built-in names {set(names) - set(BUILTIN)}"
    docs = documented()
    assert docs.get(name, set()) == set(names), (
        f"docs/images.md says {name} bakes {sorted(docs.get(name, set()))}, its Dockerfile bakes {sorted(names)}")
    if TINY_LLAMA & set(names):  # spec.adapters / --lora-modules of the image's tiny model work offline
        assert set(BUILTIN_ADAPTERS) <= set(names), f"{dockerfile} bakes a tiny-llama model but not its adapters"


def test_the_docs_table_names_only_images_that_exist() -> None:
    assert set(documented()) - {name for name, _ in IMAGES} == {"the others"}
