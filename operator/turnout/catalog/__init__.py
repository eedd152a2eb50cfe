"""Model catalog: Xinference's model families and specs, with offline lookup.

>>> from turnout.catalog import load_catalog
>>> cat = load_catalog()
>>> spec, quant = cat.candidates("qwen2.5-instruct", size_b=7, format="awq")[0]
"""

from turnout.catalog.model import (
    ENGINE_ABILITIES,
    FORMATS,
    MODEL_TYPES,
    Catalog,
    CatalogFamily,
    CatalogSpec,
    family_from_json,
    load_catalog,
    normalize_format,
    parse_size,
)

__all__ = [
    "ENGINE_ABILITIES",
    "FORMATS",
    "MODEL_TYPES",
    "Catalog",
    "CatalogFamily",
    "CatalogSpec",
    "family_from_json",
    "load_catalog",
    "normalize_format",
    "parse_size",
]
