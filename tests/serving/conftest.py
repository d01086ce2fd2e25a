"""One real tritonserver for the serving tests: the default model (`hybrid_llm`) and a tiny
random Llama (`tiny_llm`), on free loopback ports, stopped by PID at the end."""
from __future__ import annotations

import pytest

from hybridllm.config import EngineConfig
from hybridllm.serving.triton.options import ServingLimits
from hybridllm.serving.launch.repository import write_model

from ..helpers.tiny_models import make_tiny
from .triton_helpers import start_frontend, start_server

TINY = "tiny_llm"
DEFAULT = "hybrid_llm"
TINY_NON_STREAM_CAP = 256
DEFAULT_MAX_N = 4               # the OpenAI frontend's cap on n and best_of, a model parameter


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny_serving"), "llama")


@pytest.fixture(scope="session")
def triton(tmp_path_factory, tiny_model_dir, default_model_path):
    root = tmp_path_factory.mktemp("triton")
    repo = root / "repo"
    # Small KV tiers: tests need a few hundred tokens per request, not the 1 GiB CPU default.
    write_model(repo, DEFAULT, EngineConfig(model=str(default_model_path), device_kv_bytes=128 << 20,
                                            host_kv_bytes=64 << 20), ServingLimits(max_n=DEFAULT_MAX_N))
    write_model(repo, TINY, EngineConfig(model=str(tiny_model_dir), policy="gpu_only", device_kv_bytes=16 << 20,
                                         host_kv_bytes=4 << 20),
                ServingLimits(max_tokens_non_stream=TINY_NON_STREAM_CAP, max_text_input_bytes=2048, max_input_ids=1024,
                              max_sampling_parameters_bytes=1024, max_stop=4, max_stop_length=32))
    server = start_server(repo, root)
    yield server
    pid = server.pid
    server.stop()
    assert server.proc.returncode == 0, f"tritonserver (pid {pid}) exited with {server.proc.returncode}"
    assert server.leaked_at_exit == [], f"shared memory left by tritonserver: {server.leaked_at_exit}"


# The OpenAI frontend in front of the module's tritonserver, the openai client on it, and the
# in-process engine with the served model's configuration (the tokens every answer is checked against).
@pytest.fixture(scope="module")
def frontend(triton, default_model_path):
    server, thread, url = start_frontend(triton.grpc_url, default_model_path)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(frontend):
    import openai
    return openai.OpenAI(base_url=f"{frontend}/v1", api_key="none", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def llm(default_model_path):
    from hybridllm import LLM
    return LLM(str(default_model_path), device_kv_bytes=64 << 20)      # the served model's configuration
