"""The shim's command line: what the operator renders is what the shim runs."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from turnout.shim.backends import BACKENDS, backend_class, backend_path
from turnout.shim.backends.mlx import MlxBackend
from turnout.shim.backends.proxy import engine_flags, local_model_ref
from turnout.shim.backends.sglang import SglangBackend
from turnout.shim.backends.vllm import VllmBackend
from turnout.shimargs import DEVICES, ENGINES, MODEL_TYPES, ShimArgs

PROXY_ENGINES = {"vllm": VllmBackend, "sglang": SglangBackend, "mlx": MlxBackend}


def _args(**kw) -> ShimArgs:
    base = {"engine": "vllm", "model": "/models/m", "served_model_name": "m"}
    return ShimArgs(**{**base, **kw})


@pytest.mark.parametrize("engine, model_type", list(itertools.product(ENGINES, MODEL_TYPES)))
def test_every_rendered_command_parses_and_dispatches(engine: str, model_type: str) -> None:
    args = _args(engine=engine, model_type=model_type, api_key_file="/keys/k", quantization="Q4_K_M",
                 model_format="gguf", engine_args={"max_model_len": 4096, "enforce_eager": True})
    argv = args.to_argv()
    assert argv[0] == "turnout-shim"
    assert ShimArgs.parse(argv[1:]) == args
    if engine == "mlx" and model_type != "llm":
        with pytest.raises(ValueError, match="cannot serve"):
            backend_path(engine, model_type)
    else:
        module, _, cls = backend_path(engine, model_type).partition(":")
        assert module.startswith("turnout.shim.backends.") and cls.endswith("Backend")


def test_dispatch_table_covers_every_engine() -> None:
    assert {engine for engine, _ in BACKENDS} == set(ENGINES)


@pytest.mark.parametrize("engine", sorted(PROXY_ENGINES))
def test_proxy_backends_import_without_torch(engine: str) -> None:
    # the llama.cpp and vLLM images must not need the transformers backend's imports
    code = (f"import sys; from turnout.shim.backends import backend_class; "
            f"backend_class({engine!r}, 'llm'); import turnout.shim.app; "
            f"assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backend_class_is_the_engine_module() -> None:
    for engine, cls in PROXY_ENGINES.items():
        assert backend_class(engine, "llm") is cls


def test_shim_main_rejects_bad_argv() -> None:
    r = subprocess.run([sys.executable, "-m", "turnout.shim", "--engine", "nope", "--model", "m"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "invalid choice" in r.stderr


def test_shim_main_reports_unreadable_key_file(tmp_path) -> None:
    argv = _args(engine="sglang", api_key_file=str(tmp_path / "missing")).to_argv()
    r = subprocess.run([sys.executable, "-m", "turnout.shim", *argv[1:]], capture_output=True, text=True)
    assert r.returncode == 2
    assert "cannot read --api-key-file" in r.stderr


# -- engine_args -> flags -----------------------------------------------------------------------


def test_engine_flags_conversion() -> None:
    flags = engine_flags({"max_model_len": 4096, "enforce_eager": True, "enable_prefix_caching": False,
                          "limit_mm_per_prompt": {"image": 2}, "middleware": ["a", "b"], "seed": None,
                          "--kv-cache-dtype": "fp8"})
    assert flags == ["--no-enable-prefix-caching", "--enforce-eager", "--kv-cache-dtype", "fp8",
                     "--limit-mm-per-prompt", '{"image":2}', "--max-model-len", "4096",
                     "--middleware", "a", "b"]


def test_engine_flags_false_left_out_for_store_true_engines() -> None:
    assert engine_flags({"disable_radix_cache": False, "enable_metrics": True}, negate_false=False) == [
        "--enable-metrics"]


@pytest.mark.parametrize("key", ["port", "host", "served_model_name", "--model"])
def test_engine_flags_refuse_what_the_shim_sets(key: str) -> None:
    with pytest.raises(ValueError, match="the shim sets it"):
        engine_flags({key: "x"}, reserved=("host", "port", "model", "served-model-name"))


def test_engine_flags_refuse_bad_names() -> None:
    with pytest.raises(ValueError, match="not a valid flag name"):
        engine_flags({"a b": 1})


# -- each engine's command line -------------------------------------------------------------------


def test_vllm_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNOUT_VLLM_PYTHON", "/opt/vllm/bin/python")
    cmd = VllmBackend(_args(model="file:///models/llama", served_model_name="llama", tensor_parallel_size=4,
                            device="cuda", engine_args={"max_model_len": 8192})).command(4321)
    assert cmd == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server",
                   "--model", "/models/llama", "--served-model-name", "llama", "--host", "127.0.0.1",
                   "--port", "4321", "--tensor-parallel-size", "4", "--max-model-len", "8192"]
    emb = VllmBackend(_args(model_type="embedding")).command(1)
    assert emb[emb.index("--runner") + 1] == "pooling"
    assert VllmBackend(_args(model_type="rerank")).capabilities == frozenset({"rerank"})
    with pytest.raises(ValueError, match=r"tensor_parallel_size.*the shim sets it"):
        VllmBackend(_args(engine_args={"tensor_parallel_size": 2})).command(1)


def test_vllm_python_defaults_to_the_shims(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNOUT_VLLM_PYTHON", raising=False)
    assert VllmBackend(_args()).command(1)[0] == sys.executable


def test_sglang_command() -> None:
    cmd = SglangBackend(_args(engine="sglang", model="hf://Qwen/Qwen2.5-7B", served_model_name="qwen",
                              tensor_parallel_size=2, device="cuda", model_type="embedding",
                              engine_args={"mem_fraction_static": 0.8})).command(30000)
    assert cmd[1:] == ["-m", "sglang.launch_server", "--model-path", "Qwen/Qwen2.5-7B",
                       "--served-model-name", "qwen", "--host", "127.0.0.1", "--port", "30000",
                       "--tp-size", "2", "--device", "cuda", "--is-embedding", "--mem-fraction-static", "0.8"]
    with pytest.raises(ValueError, match="does not run on device 'mps'"):
        SglangBackend(_args(engine="sglang", device="mps")).command(1)


def test_mlx_command_and_renaming() -> None:
    b = MlxBackend(_args(engine="mlx", served_model_name="my-model", device="mps",
                         engine_args={"max_tokens": 1024}))
    assert b.command(9)[1:] == ["-m", "mlx_lm", "server", "--model", "/models/m", "--host", "127.0.0.1",
                                "--port", "9", "--max-tokens", "1024"]
    assert b.to_engine({"model": "my-model", "max_completion_tokens": 5}) == {
        "model": "default_model", "max_completion_tokens": 5, "max_tokens": 5}
    assert b.rewrite_stream(b'data: {"id": "x", "model": "default_model", "choices": []}\n\n') == \
        b'data: {"id": "x", "model": "my-model", "choices": []}\n\n'
    with pytest.raises(ValueError, match="only llm"):
        MlxBackend(_args(engine="mlx", model_type="embedding"))


@pytest.mark.parametrize("device", DEVICES)
def test_vllm_accepts_every_device(device: str) -> None:
    assert VllmBackend(_args(device=device)).command(1)


def test_local_model_ref() -> None:
    assert local_model_ref("file:///data/m") == "/data/m"
    assert local_model_ref("hf://org/name") == "org/name"
    assert local_model_ref("/abs/path") == "/abs/path"


# -- LoRA adapters (docs/lora.md) ------------------------------------------------------------------


def test_lora_flags_round_trip_for_every_engine() -> None:
    from turnout.shimargs import LoraModule

    for engine in ENGINES:
        args = _args(engine=engine, enable_lora=True, max_loras=4, max_lora_rank=32,
                     lora_modules=(LoraModule("sql", "/adapters/sql"), LoraModule("chat", "/adapters/c=1")))
        argv = args.to_argv()
        assert argv[argv.index("--lora-modules") + 1:argv.index("--lora-modules") + 3] == [
            "sql=/adapters/sql", "chat=/adapters/c=1"]
        assert ShimArgs.parse(argv[1:]) == args
    assert "--enable-lora" not in _args().to_argv()


@pytest.mark.parametrize("extra, message", [
    (["--lora-modules", "a=/x"], "needs --enable-lora"),
    (["--enable-lora", "--max-loras", "2", "--lora-modules", "a=/x", "a=/y"], "must be unique"),
    (["--enable-lora", "--lora-modules", "a=/x", "b=/y"], "--max-loras 1"),
    (["--enable-lora", "--lora-modules", "just-a-path"], "expected name=path"),
    (["--enable-lora", "--max-lora-rank", "0"], "must be >= 1"),
])
def test_lora_flags_refuse_bad_input(extra: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ShimArgs.parse(["--engine", "vllm", "--model", "/m", *extra])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_vllm_lora_command_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", raising=False)
    b = VllmBackend(_args(enable_lora=True, max_loras=3, max_lora_rank=64))
    cmd = b.command(1)
    i = cmd.index("--enable-lora")
    assert cmd[i:i + 5] == ["--enable-lora", "--max-loras", "3", "--max-lora-rank", "64"]
    assert "--lora-modules" not in cmd  # loaded through the runtime API like any later adapter
    assert b.child_env()["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in VllmBackend(_args()).child_env()
    assert "--enable-lora" not in VllmBackend(_args()).command(1)
    with pytest.raises(ValueError, match=r"'max_loras'.*the shim sets it"):
        VllmBackend(_args(enable_lora=True, engine_args={"max_loras": 9})).command(1)


def test_sglang_lora_command_and_request() -> None:
    b = SglangBackend(_args(engine="sglang", served_model_name="base", enable_lora=True, max_loras=2,
                            max_lora_rank=16))
    cmd = b.command(1)
    i = cmd.index("--enable-lora")
    assert cmd[i:] == ["--enable-lora", "--max-loras-per-batch", "2", "--max-lora-rank", "16",
                       "--lora-target-modules", "all"]
    assert b.lora_endpoints == ("/load_lora_adapter", "/unload_lora_adapter")
    assert b.to_engine({"model": "sql", "messages": []}) == {"model": "base", "lora_path": "sql", "messages": []}
    assert b.to_engine({"model": "base", "messages": []}) == {"model": "base", "messages": []}


async def test_mlx_cannot_load_adapters_at_run_time() -> None:
    from turnout.wire.errors import OpenAIError

    b = MlxBackend(_args(engine="mlx", enable_lora=True))
    with pytest.raises(OpenAIError) as exc:
        await b.load_adapter("a", "/adapters/a")
    assert exc.value.status == 501 and exc.value.code == "lora_unsupported"
