"""Register the tiny model as a custom LLM in a running Xinference and launch it (transformers engine).

    .venv-bench-xinference/bin/python benchmarks/peers/xinference_launch.py URL HF_DIR TEMPLATE_FILE EOS_ID

Runs in Xinference's own venv (its client). Prints the model uid on success.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from xinference.client import Client

NAME = "tiny-llama-bench"


def main() -> None:
    url, hf_dir, template_file, eos = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    spec = {
        "version": 2, "context_length": 2048, "model_name": NAME, "model_lang": ["en"],
        "model_ability": ["generate", "chat"], "model_description": "turnout's tiny test Llama",
        "model_family": "llama", "architectures": ["LlamaForCausalLM"],
        "model_specs": [{"model_format": "pytorch", "model_size_in_billions": 1, "quantization": "none",
                         "model_uri": str(hf_dir)}],
        "chat_template": Path(template_file).read_text(), "stop_token_ids": [eos], "stop": [],
    }
    client = Client(url)
    client.register_model(model_type="LLM", model=json.dumps(spec), persist=False)
    uid = client.launch_model(model_name=NAME, model_type="LLM", model_engine="Transformers", model_uid="tiny",
                              model_format="pytorch", model_size_in_billions=1, quantization="none")
    print(uid, flush=True)


if __name__ == "__main__":
    main()
