"""docker/Dockerfile.cpu built and run as the README says: the container serves Triton (HTTP, gRPC)
and the OpenAI API on their documented ports, answers with the same tokens as LLM.generate, and
stops within 30 s of SIGTERM. Runs wherever podman (or a docker daemon) is present; .ci/run installs it."""
from __future__ import annotations

import json
import time
import urllib.request
import uuid
from types import SimpleNamespace

import pytest

from hybridllm import LLM, SamplingParams

from ..serving.triton_helpers import free_ports, grpc_stream, http_post
from .engine import CPU_TAG, build_cpu_image, engine, engine_env, ensure_cpu_base, run

CLI = engine()
pytestmark = [pytest.mark.slow, pytest.mark.image,
              pytest.mark.skipif(CLI is None, reason="no podman and no running docker daemon on this host")]
MODEL = "hybrid_llm"
PROMPT = "Once upon a time, there was a little"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"max_tokens": 16, "temperature": 0.0}


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    work = tmp_path_factory.mktemp("image")
    env = engine_env(work)
    ensure_cpu_base(CLI, env, work)
    build_cpu_image(CLI, env, work)
    http, grpc, metrics, openai_port = free_ports(4)
    name = f"hybridllm-test-{uuid.uuid4().hex[:8]}"
    run(CLI + ["run", "-d", "--name", name, "--shm-size=1g", "-p", f"127.0.0.1:{http}:8000",
               "-p", f"127.0.0.1:{grpc}:8001", "-p", f"127.0.0.1:{metrics}:8002",
               "-p", f"127.0.0.1:{openai_port}:9000", CPU_TAG], env, 120)
    c = SimpleNamespace(name=name, env=env, http_url=f"127.0.0.1:{http}", grpc_url=f"127.0.0.1:{grpc}",
                        openai_url=f"http://127.0.0.1:{openai_port}", stopped=False)
    try:
        yield c
    finally:
        if not c.stopped:
            print(run(CLI + ["logs", name], env, 60, check=False).stdout.decode(errors="replace")[-4000:])
        run(CLI + ["rm", "-f", name], env, 120, check=False)


@pytest.fixture(scope="module")
def ready(container):
    deadline = time.monotonic() + 300          # model load on 2 busy cores; the model was converted at build
    while time.monotonic() < deadline:
        if (_status(f"http://{container.http_url}/v2/health/ready") == 200
                and _status(f"{container.openai_url}/health") == 200):
            return container
        state = run(CLI + ["inspect", "-f", "{{.State.Running}}", container.name], container.env, 30, check=False)
        assert state.stdout.strip() == b"true", "the container exited while starting"
        time.sleep(1)
    pytest.fail("the container was not ready (/v2/health/ready and OpenAI /health) after 300 s")


@pytest.fixture(scope="module")
def llm(default_model_path):
    return LLM(str(default_model_path), device_kv_bytes=64 << 20)


def test_grpc_stream_equals_llm_generate(ready, llm):
    (want,) = llm.generate([PROMPT], SamplingParams(**GREEDY), use_tqdm=False)
    res = grpc_stream(ready, MODEL, PROMPT, GREEDY)
    assert res.errors == [] and res.finals == 1
    assert res.token_ids == list(want.token_ids) and res.text == want.text


def test_http_generate_equals_llm_generate(ready, llm):
    (want,) = llm.generate([PROMPT], SamplingParams(**GREEDY), use_tqdm=False)
    status, body = http_post(ready, f"/v2/models/{MODEL}/generate",
                             {"text_input": PROMPT, "exclude_input_in_output": True,
                              "sampling_parameters": json.dumps(GREEDY)})
    assert status == 200, body
    out = json.loads(body)
    ids = out["output_ids"]
    assert ([ids] if isinstance(ids, int) else ids) == list(want.token_ids)
    assert out["text_output"] == want.text


def test_openai_chat_equals_llm_generate(ready, llm, default_model_path):
    import openai
    import transformers
    prompt = transformers.AutoTokenizer.from_pretrained(default_model_path).apply_chat_template(
        CHAT, tokenize=False, add_generation_prompt=True)
    (want,) = llm.generate([prompt], SamplingParams(**GREEDY), use_tqdm=False)
    client = openai.OpenAI(base_url=f"{ready.openai_url}/v1", api_key="none", max_retries=0, timeout=300)
    got = client.chat.completions.create(model=MODEL, messages=CHAT, **GREEDY)
    assert got.choices[0].message.content == want.text
    assert got.usage.completion_tokens == len(want.token_ids)


def test_the_model_was_converted_at_build_not_at_start(ready):
    logs = run(CLI + ["logs", ready.name], ready.env, 60).stdout.decode(errors="replace")
    assert "hybridllm: serving 'hybrid_llm'" in logs, logs[-2000:]
    assert "converting" not in logs, "the container converted the default model again at start"


def test_sigterm_stops_the_container_within_30_s(ready):
    t0 = time.monotonic()
    run(CLI + ["kill", "--signal", "TERM", ready.name], ready.env, 30)
    code = run(CLI + ["wait", ready.name], ready.env, 60)
    took = time.monotonic() - t0
    ready.stopped = True
    assert took <= 30, f"the container took {took:.1f} s to stop after SIGTERM"
    assert code.stdout.strip() == b"0", f"exit code {code.stdout!r} after SIGTERM"
