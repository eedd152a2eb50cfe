"""A stand-in for SGLang's HTTP server, used by the shim's proxy tests.

SGLang does not install on a CPU-only machine; this package is put on
``PYTHONPATH`` so that ``python -m sglang.launch_server`` runs
:mod:`sglang.launch_server` from here instead.
"""
