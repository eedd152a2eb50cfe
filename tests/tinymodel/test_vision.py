"""The tiny vision models: built offline into the cache, once, with the shapes the tests rely on."""

from __future__ import annotations

import json
from pathlib import Path

from turnout.tinymodel import build_tiny_mmproj, build_tiny_vision_model
from turnout.tinymodel.builder import RECIPE as TEXT


def test_the_llava_folder_has_a_processor_and_an_image_token(tiny_model: object) -> None:
    hf = build_tiny_vision_model()
    assert build_tiny_vision_model() == hf  # cached: the second call builds nothing
    config = json.loads((hf / "config.json").read_text())
    assert config["model_type"] == "llava" and config["vision_config"]["image_size"] == 32
    assert (hf / "processor_config.json").is_file() and (hf / "chat_template.jinja").is_file()


def test_the_projector_gguf_projects_into_the_tiny_llama(tmp_path: Path) -> None:
    import gguf

    path = build_tiny_mmproj(tmp_path)  # needs no text model: a fresh cache builds it in a moment
    reader = gguf.GGUFReader(str(path))
    fields = {name: f.contents() for name, f in reader.fields.items()}
    assert fields["general.architecture"] == "clip" and fields["clip.projector_type"] == "mlp"
    assert fields["clip.vision.projection_dim"] == TEXT["hidden_size"]
    assert {t.name for t in reader.tensors} >= {"v.patch_embd.weight", "mm.0.weight", "mm.2.weight"}
