#!/usr/bin/env python3
"""Convert Xinference's model catalog into turnout's own catalog data.

Reads ``xinference/llm_family.json``, ``xinference/embedding_model_spec.json``,
``xinference/rerank_model_spec.json`` and ``engine_architectures.json`` from the
source folder (default: ``../shared/catalog`` next to the repository) and writes
``llm.json``, ``embedding.json``, ``rerank.json`` and ``engines.json`` under
``operator/turnout/catalog/data/``. The output is deterministic: the same
input always gives byte-identical files, so a test can detect drift.

Usage::

    python scripts/convert_catalog.py [--source DIR] [--out DIR] [--check]

``--check`` writes nothing and exits 1 when the committed data differs from a
fresh conversion.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "catalog"
DEFAULT_OUT = REPO_ROOT / "operator" / "turnout" / "catalog" / "data"

# The hubs turnout can download from, in order of preference.
HUBS = ("huggingface", "modelscope")
FORMAT_SYNONYMS = {"ggufv2": "gguf"}
DESCRIPTION_MAX = 200
ENGINE_ABILITIES = ("generate", "chat", "multimodal")

SOURCE_FILES = {
    "llm": "xinference/llm_family.json",
    "embedding": "xinference/embedding_model_spec.json",
    "rerank": "xinference/rerank_model_spec.json",
}


class ConversionError(Exception):
    """The source data does not have the shape this converter expects."""


def parse_size(value: Any) -> int | float:
    """Xinference writes sizes as numbers or strings with ``_`` for the point: ``"1_5"`` -> 1.5."""
    if isinstance(value, bool):
        raise ConversionError(f"bad model size: {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip().replace("_", "."))
        except ValueError as exc:
            raise ConversionError(f"bad model size: {value!r}") from exc
    else:
        raise ConversionError(f"bad model size: {value!r}")
    return int(number) if number.is_integer() else number


_NAME_SIZE = re.compile(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)[bB](?![A-Za-z0-9])")


def size_from_repo_name(model_id: str) -> int | float | None:
    """Billions of parameters as a repository name states them ("Qwen/Qwen3-Embedding-0.6B" -> 0.6).

    Xinference gives embedding and rerank models no size; their names often do.
    """
    match = _NAME_SIZE.search(model_id.rsplit("/", 1)[-1])
    return parse_size(match.group(1)) if match else None


def short_description(text: str) -> str:
    """The first sentence of a description, at most DESCRIPTION_MAX characters."""
    text = " ".join(text.split())
    match = re.search(r"[.!?](\s|$)|。", text)
    if match:
        text = text[: match.end()].strip()
    if len(text) > DESCRIPTION_MAX:
        cut = text[: DESCRIPTION_MAX - 1]
        if " " in cut:
            cut = cut[: cut.rindex(" ")]
        text = cut.rstrip(",;: ") + "…"
    return text


def _dedupe(items: list[str]) -> list[str]:
    """Keep the first of entries equal case-insensitively, in order."""
    seen: set[str] = set()
    out = []
    for item in items:
        key = item.lower()
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def convert_spec(family: str, spec: dict[str, Any], *, with_size: bool) -> dict[str, Any]:
    """One Xinference model spec -> one turnout spec (None and empty fields left out)."""
    fmt = spec["model_format"].lower()
    fmt = FORMAT_SYNONYMS.get(fmt, fmt)
    sources = spec.get("model_src") or {}
    hub = next((h for h in HUBS if h in sources), None)
    if hub is None:
        raise ConversionError(f"{family}: spec {fmt} has no source on {' or '.join(HUBS)}: {sorted(sources)}")
    src = sources[hub]
    quantizations = list(src.get("quantizations") or spec.get("quantizations") or [])
    parts = {q: list(p) for q, p in (src.get("quantization_parts") or {}).items() if p}
    if fmt == "gguf":
        # Split-only GGUF quantizations are listed in quantization_parts but not always in
        # quantizations (where Xinference then writes a placeholder "none").
        quantizations = [q for q in quantizations if q.lower() != "none"] + list(parts)
    quantizations = _dedupe(quantizations)
    if not quantizations:
        raise ConversionError(f"{family}: spec {fmt} {src.get('model_id')} lists no quantization")
    out: dict[str, Any] = {
        "format": fmt,
        "hub": hub,
        "model_id": src["model_id"],
        "quantizations": quantizations,
    }
    if with_size:
        out["size_b"] = parse_size(spec["model_size_in_billions"])
        if spec.get("activated_size_in_billions") is not None:
            out["activated_size_b"] = parse_size(spec["activated_size_in_billions"])
    elif (named := size_from_repo_name(src["model_id"])) is not None:
        out["size_b"] = named
    if src.get("model_revision"):
        out["revision"] = src["model_revision"]
    if src.get("model_file_name_template"):
        out["file_template"] = src["model_file_name_template"]
    if parts:
        if not src.get("model_file_name_split_template"):
            raise ConversionError(f"{family}: {src['model_id']} has split parts but no split template")
        out["split_template"] = src["model_file_name_split_template"]
        out["parts"] = parts
    if fmt == "gguf":
        single = [q for q in quantizations if q not in parts]
        if single and "file_template" not in out:
            raise ConversionError(f"{family}: {src['model_id']} has no file template for {single}")
    if src.get("multimodal_projectors"):
        out["mmproj"] = list(src["multimodal_projectors"])
    return out


def convert_llm(data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    families = []
    for fam in data:
        name = fam["model_name"]
        families.append(
            {
                "name": name,
                "type": "llm",
                "abilities": list(fam.get("model_ability") or []),
                "architectures": list(fam.get("architectures") or []),
                "context_length": fam.get("context_length"),
                "description": short_description(fam.get("model_description") or ""),
                "specs": [convert_spec(name, s, with_size=True) for s in fam["model_specs"]],
            }
        )
    return families


def convert_embedding(data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "name": fam["model_name"],
            "type": "embedding",
            "abilities": ["embed"],
            "dimensions": fam.get("dimensions"),
            "max_tokens": fam.get("max_tokens"),
            "specs": [convert_spec(fam["model_name"], s, with_size=False) for s in fam["model_specs"]],
        }
        for fam in data
    ]


def convert_rerank(data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "name": fam["model_name"],
            "type": "rerank",
            "abilities": ["rerank"],
            "rerank_type": fam.get("type") or "normal",
            "max_tokens": fam.get("max_tokens"),
            "specs": [convert_spec(fam["model_name"], s, with_size=False) for s in fam["model_specs"]],
        }
        for fam in data
    ]


def _drop_none(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if v is not None and v != ""}


def _dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def render_families(about: str, source: str, families: list[dict[str, Any]]) -> str:
    """Families sorted by name; one line per family header and one per spec (diff-friendly)."""
    families = sorted(families, key=lambda f: (f["name"].lower(), f["name"]))
    lines = [
        "{",
        f'"_about":{_dump(about)},',
        f'"source":{_dump(source)},',
        f'"count":{len(families)},',
        '"families":[',
    ]
    for i, fam in enumerate(families):
        head = _drop_none({k: v for k, v in fam.items() if k != "specs"})
        lines.append(_dump(head)[:-1] + ',"specs":[')
        specs = fam["specs"]
        for j, spec in enumerate(specs):
            lines.append(_dump(spec) + ("," if j < len(specs) - 1 else ""))
        lines.append("]}" + ("," if i < len(families) - 1 else ""))
    lines += ["]", "}"]
    return "\n".join(lines) + "\n"


def render_engines(about: str, data: dict[str, Any]) -> str:
    engines = {}
    for engine, lists in data.items():
        if engine.startswith("_"):
            continue
        unknown = set(lists) - set(ENGINE_ABILITIES)
        if unknown:
            raise ConversionError(f"engine_architectures.json: {engine}: unknown abilities {sorted(unknown)}")
        engines[engine] = {ability: sorted(set(archs)) for ability, archs in lists.items()}
    out = {"_about": about, "engines": engines}
    return json.dumps(out, sort_keys=True, ensure_ascii=False, indent=1) + "\n"


def source_commit(engine_data: dict[str, Any]) -> str:
    """The Xinference commit named in engine_architectures.json's _about (e.g. ``@7ecec16``)."""
    match = re.search(r"xorbitsai/inference\s*@([0-9a-f]{7,40})", engine_data.get("_about", ""))
    if not match:
        raise ConversionError("engine_architectures.json: _about names no xorbitsai/inference commit")
    return match.group(1)


def convert(source: Path) -> dict[str, str]:
    """File name -> file text for every data file, from the catalog folder ``source``."""
    try:
        engine_data = json.loads((source / "engine_architectures.json").read_text(encoding="utf-8"))
        raw = {k: json.loads((source / rel).read_text(encoding="utf-8")) for k, rel in SOURCE_FILES.items()}
    except FileNotFoundError as exc:
        raise ConversionError(f"catalog source file missing: {exc.filename}") from exc
    commit = source_commit(engine_data)
    converters = {"llm": convert_llm, "embedding": convert_embedding, "rerank": convert_rerank}
    files = {}
    for kind, rel in SOURCE_FILES.items():
        about = (
            f"turnout {kind} catalog, converted from Xinference (xorbitsai/inference @{commit}) "
            f"{rel} by scripts/convert_catalog.py. Generated: do not edit; see docs/catalog.md."
        )
        source_ref = f"https://github.com/xorbitsai/inference/blob/{commit}/{rel}"
        files[f"{kind}.json"] = render_families(about, source_ref, converters[kind](raw[kind]))
    engines_about = (
        f"Architectures each engine is known to serve, from engine_architectures.json "
        f"(Xinference @{commit}). Generated by scripts/convert_catalog.py. "
        f"Original note: {engine_data.get('_about', '')}"
    )
    files["engines.json"] = render_engines(engines_about, engine_data)
    names = [fam["model_name"].lower() for kind in SOURCE_FILES for fam in raw[kind]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConversionError(f"model names are not unique (case-insensitively): {dupes}")
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="default: ../shared/catalog")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the data would change")
    args = p.parse_args(argv)
    try:
        files = convert(args.source)
    except (ConversionError, json.JSONDecodeError, KeyError) as exc:
        print(f"convert_catalog: {exc}", file=sys.stderr)
        return 2
    changed = []
    for name, text in sorted(files.items()):
        path = args.out / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            changed.append(name)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
        print(f"{path}: {len(text.encode('utf-8'))} bytes{' (changed)' if name in changed else ''}")
    if args.check and changed:
        print(
            f"convert_catalog: out of date: {', '.join(changed)}; run scripts/convert_catalog.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
