"""The engine registry: one module per engine, every engine table derived from it.

Adding an engine is one module and its entry in the registry (its import and its line): the last test
writes a throwaway engine into a copy of the package and sees it reach the resolver, the image matrix,
the shim's backend table and the operator config's defaults.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from turnout import config, images, shimargs
from turnout.api import types
from turnout.resolver.engines import ENGINES, PREFERENCE, REGISTRY, Engine, preference_table
from turnout.shim import backends

PACKAGE = Path(images.__file__).parent


@pytest.mark.parametrize("engine", REGISTRY, ids=lambda e: e.name)
def test_every_entry_is_complete(engine: Engine) -> None:
    assert engine.on, "an engine runs on at least one accelerator"
    assert set(engine.on) <= set(types.ACCELERATORS)
    assert {on.device for on in engine.on.values()} <= set(shimargs.DEVICES)
    assert engine.backends, "an engine names the shim backend that serves it"
    assert set(engine.backends) <= {None, *shimargs.MODEL_TYPES}
    for path in engine.backends.values():
        module, _, cls = path.partition(":")
        assert module.startswith("turnout.shim.backends.") and cls, path
        assert importlib.util.find_spec(module) is not None, f"{path}: no such module"


def test_names_are_unique_and_the_api_enum_lists_them() -> None:
    names = [e.name for e in REGISTRY]
    assert len(set(names)) == len(names)
    # The API (CRD enum, CEL rules) and the shim's --engine choices name the same engines.
    assert tuple(names) == types.ENGINES == shimargs.ENGINES


def test_ranks_order_each_accelerator_without_ties() -> None:
    for accel in PREFERENCE:
        ranks = [e.on[accel].rank for e in REGISTRY if accel in e.on]
        assert len(set(ranks)) == len(ranks), f"two engines share a rank on {accel}"


def test_every_engine_table_is_derived_from_the_registry() -> None:
    assert {e.name: e for e in REGISTRY} == ENGINES
    assert preference_table(REGISTRY) == PREFERENCE
    assert images.image_matrix(REGISTRY) == images.IMAGE_MATRIX
    assert backends.backend_table(REGISTRY) == backends.BACKENDS
    assert tuple(e.name for e in REGISTRY if e.multi_node is not None) == backends.MULTI_NODE_ENGINES
    assert tuple(e.name for e in REGISTRY if e.auto) == config.DEFAULT_AUTO_ENGINES


def test_the_tables_keep_their_meaning() -> None:
    # What the tables said before they were derived (auto's order, the opt-in engine, the images on metal).
    assert PREFERENCE == {
        "nvidia": ("vllm", "sglang", "transformers", "llama.cpp"),
        "ascend": ("vllm", "transformers"),
        "metal": ("mlx", "llama.cpp", "transformers"),
        "cpu": ("llama.cpp", "transformers"),
    }
    assert backends.MULTI_NODE_ENGINES == ("vllm", "sglang")
    assert config.DEFAULT_AUTO_ENGINES == ("vllm", "llama.cpp", "transformers", "mlx")
    assert images.IMAGE_MATRIX["llama.cpp", "cpu"].dockerfile == "images/llamacpp-cpu/Dockerfile"
    assert images.IMAGE_MATRIX["mlx", "metal"].host_agent


TOY = '''
"""A throwaway engine: serves anything on CPU."""

from turnout.resolver.engines.base import Engine, On


def check_model(model, accelerator, ctx):
    return None


ENGINE = Engine(
    name="toy",
    on={"cpu": On(rank=0, device="cpu", image="toy-cpu")},
    check_model=check_model,
    backends={None: "turnout.shim.backends.llamacpp:LlamaCppBackend"},
)
'''

PROBE = '''
from turnout.api import ModelDeploymentSpec
from turnout.config import OperatorConfig
from turnout.hardware import parse_nodes
from turnout.images import IMAGE_MATRIX
from turnout.resolver import resolve
from turnout.shim.backends import BACKENDS, backend_path

node = {"metadata": {"name": "cpu-1", "labels": {}}, "status": {"allocatable": {"cpu": "8", "memory": "64Gi"}}}
spec = ModelDeploymentSpec.model_validate({"model": {"uri": "hf://example/anything", "size": 1}})
plan = resolve(spec, parse_nodes([node]), OperatorConfig())
assert plan.ok, plan
assert (plan.engine, plan.device, plan.image) == ("toy", "cpu", "ghcr.io/turnout-dev/toy-cpu:0.1.0"), plan
assert IMAGE_MATRIX["toy", "cpu"].dockerfile == "images/toy-cpu/Dockerfile"
assert backend_path("toy", "llm") == BACKENDS["toy", None]
print("toy served")
'''


def test_a_new_engine_is_one_module_and_one_registry_entry(tmp_path: Path) -> None:
    copy = tmp_path / "turnout"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "resolver" / "engines" / "toy.py").write_text(textwrap.dedent(TOY))
    registry = copy / "resolver" / "engines" / "__init__.py"
    text = registry.read_text()
    imports = "from turnout.resolver.engines import llamacpp, mlx, sglang, transformers, vllm\n"
    assert imports in text and "    vllm.ENGINE,\n" in text
    text = text.replace(imports, imports.replace("sglang,", "sglang, toy,"))
    registry.write_text(text.replace("    vllm.ENGINE,\n", "    vllm.ENGINE,\n    toy.ENGINE,\n"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "toy served"


def test_the_registry_loads_without_the_resolver_core() -> None:
    # The shim and the image tools read the registry; neither needs the resolver's core, the API types or the catalog.
    code = ("import sys, turnout.shim.backends, turnout.images, turnout.shimargs; "
            "loaded = {'turnout.resolver.core', 'turnout.api.types', 'turnout.catalog'} & set(sys.modules); "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
