"""The engines the conformance suite runs: shims in front of the tiny model, and stand-ins for vLLM/SGLang."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shim"))

from conformance_features import SERVED, VISION, Target
from shimproc import STANDIN, RunningShim, start_shim_process

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def shims(tmp_path_factory: pytest.TempPathFactory, free_port_factory: Callable[[], int],
          tiny_model: Any) -> Iterator[Callable[..., RunningShim]]:
    started: dict[str, RunningShim] = {}

    def get(engine: str, model: str | None = None, served: str = SERVED, **kw: Any) -> RunningShim:
        key = f"{engine}:{served}"
        if engine == "llama.cpp":  # room for a forced tool call (conformance_features.ROOM) after the prompt
            kw["engine_args"] = {"n_ctx": 2048, **kw.get("engine_args", {})}
        if key not in started:
            if model is None:
                model = {"transformers": str(tiny_model.hf_dir), "llama.cpp": str(tiny_model.gguf_path)}.get(
                    engine, "/models/standin-7b")
            env = {"PYTHONPATH": os.pathsep.join([str(HERE / "standin"), str(STANDIN),
                                                  os.environ.get("PYTHONPATH", "")]),
                   "TURNOUT_VLLM_PYTHON": sys.executable}
            shim = start_shim_process(tmp_path_factory.mktemp("conformance"), free_port_factory(), engine=engine,
                                      model=model, served=served, env=env, **kw)
            started[key] = shim
            shim.wait_health(200)
        return started[key]

    yield get
    for shim in started.values():
        shim.stop()


@pytest.fixture(scope="session")
def target(shims: Callable[..., RunningShim]) -> Callable[[str], Target]:
    def make(engine: str) -> Target:
        from turnout.tinymodel import build_tiny_mmproj, build_tiny_model, build_tiny_vision_model

        if engine == "transformers":
            shim = shims(engine, str(build_tiny_vision_model()), VISION)
        else:  # llama.cpp: the tiny Llama with a projector
            shim = shims(engine, str(build_tiny_model().gguf_path), VISION,
                         engine_args={"mmproj.path": str(build_tiny_mmproj())})
        return Target(shims(engine).openai(), SERVED, Target(shim.openai(), VISION))

    return make
