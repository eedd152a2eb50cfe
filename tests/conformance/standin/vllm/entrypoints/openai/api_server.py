"""Stand-in for ``python -m vllm.entrypoints.openai.api_server``: the SGLang stand-in's API on vLLM's flags.

vLLM's and SGLang's OpenAI servers share the routes the shim forwards to (chat, completions,
``/v1/responses``), so one stand-in serves both contract columns; only the command line differs.
"""

from __future__ import annotations

import sys

from sglang import launch_server  # the SGLang stand-in (tests/shim/standin)

FLAGS = {"--model": "--model-path", "--tensor-parallel-size": "--tp-size"}

if __name__ == "__main__":
    argv = [FLAGS.get(a, a) for a in sys.argv[1:]]
    sys.argv = [sys.argv[0], *argv]
    launch_server.main()
