"""Which tool-call parser a model family needs, in vLLM's and SGLang's names.

An engine that serves tools reads the model's calls out of its text with a
parser for the family's call format; vLLM and SGLang must be told which one
(vLLM: ``--enable-auto-tool-choice --tool-call-parser NAME``; SGLang:
``--tool-call-parser NAME``). The operator renders the shim's
``--tool-call-parser`` from the catalog family (vLLM's name is the one the
shim arguments carry); each proxy backend turns it into its engine's flags,
and the transformers engine uses it to pick its own parser.

Names are the parsers registered in vLLM 0.32 (``vllm/tool_parsers``) and
those SGLang documents (docs.sglang.io, Tool Parser); a family with no SGLang
parser gets none there, and its calls stay in the text.
"""

from __future__ import annotations

import re

#: (family name pattern, vLLM parser); first match wins, matched case-insensitively on the catalog name
RULES: tuple[tuple[str, str], ...] = (
    (r"qwen3-coder", "qwen3_coder"),
    (r"qwen3\.[5-9]|nex-n2|ornith", "qwen3_coder"),  # Qwen 3.5 writes Qwen3-Coder's XML calls
    (r"qwen|qwq|baichuan-m2|dianjin|marco-o1|vibethinker|xiyansql", "hermes"),
    (r"deepseek-v3\.2-exp|deepseek-v3\.1", "deepseek_v31"),
    (r"deepseek-v3\.2", "deepseek_v32"),
    (r"deepseek-v4", "deepseek_v4"),
    (r"deepseek-r1-0528|deepseek-v3", "deepseek_v3"),
    (r"glm-4\.5|glm-4\.6", "glm45"),
    (r"glm-4\.7|glm-5", "glm47"),
    (r"llama-3\.[123]|llama-3\.1", "llama3_json"),
    (r"minicpm5", "minicpm5"),
    (r"minimax-m3", "minimax_m3"),
    (r"minimax-m2", "minimax_m2"),
    (r"ling-3", "ling3"),
    (r"internlm", "internlm"),
    (r"seed-oss", "seed_oss"),
    (r"mistral|devstral|magistral", "mistral"),
    (r"gemma-4", "gemma4"),
)

#: vLLM parser -> SGLang's parser for the same call format (docs.sglang.io, Tool Parser)
SGLANG: dict[str, str] = {
    "hermes": "qwen25",
    "qwen3_coder": "qwen3_coder",
    "deepseek_v3": "deepseekv3",
    "deepseek_v31": "deepseekv31",
    "deepseek_v32": "deepseekv32",
    "glm45": "glm",
    "llama3_json": "llama3",
    "mistral": "mistral",
    "kimi_k2": "kimi_k2",
    "pythonic": "pythonic",
}

#: vLLM parser -> the transformers engine's own parser (turnout.shim.toolcalls)
IN_PROCESS: dict[str, str] = {"hermes": "hermes", "llama3_json": "llama3_json", "mistral": "mistral"}


def tool_parser(family: str | None, abilities: tuple[str, ...] = ()) -> str | None:
    """vLLM's parser for a catalog family that calls tools; None when it does not or none is known."""
    if not family or "tools" not in abilities:
        return None
    for pattern, parser in RULES:
        if re.search(pattern, family, re.IGNORECASE):
            return parser
    return None
