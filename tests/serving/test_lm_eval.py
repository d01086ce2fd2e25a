"""lm-evaluation-harness against `hybridllm serve --openai-port`: its `local-completions` model scores a
small multiple-choice task (tests/data/lm_eval/mc10.jsonl, offline) and must agree with its own `hf` model
on the same weights (the default model's folder): every loglikelihood within 0.02 nats and the same
accuracy, with token-id prompts (lm-eval's default) and with text prompts (tokenized_requests=False), in
batches of 4 prompts per request. This is the path every MMLU / HellaSwag / ARC score takes.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .triton_helpers import free_ports, serve_banner

pytestmark = pytest.mark.slow          # the default model, a real tritonserver and lm-eval
DATA = Path(__file__).parents[1] / "data" / "lm_eval" / "mc10.jsonl"
TASK = "hybridllm_mc10"
TOLERANCE = 0.02                       # nats, per loglikelihood (observed ~5e-5)


def task_yaml(folder: Path) -> None:
    (folder / "mc10.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {DATA}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
""")


@pytest.fixture(scope="module")
def served(tmp_path_factory, default_model_path):
    root = tmp_path_factory.mktemp("lm_eval_serve")
    http, grpc, metrics, oai = free_ports(4)
    exe = Path(sys.executable).parent / "hybridllm"
    serve = subprocess.Popen([str(exe), "serve", "--model", str(default_model_path), "--device-kv-bytes", str(64 << 20),
                              "--host-kv-bytes", str(64 << 20), "--http-port", str(http), "--grpc-port", str(grpc),
                              "--metrics-port", str(metrics), "--openai-port", str(oai), "--workdir", str(root),
                              "--log-file", str(root / "log.txt")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        serve_banner(serve, 300)
        yield f"http://127.0.0.1:{oai}"
    finally:
        serve.send_signal(signal.SIGINT)
        serve.communicate(timeout=60)


def evaluate(model: str, model_args: str, tasks_dir: Path):
    import lm_eval
    from lm_eval.tasks import TaskManager
    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[TASK], log_samples=True,
                                  task_manager=TaskManager(include_path=str(tasks_dir)))
    samples = sorted(out["samples"][TASK], key=lambda d: d["doc_id"])
    return out["results"][TASK]["acc,none"], [[r[0][0] for r in d["resps"]] for d in samples]


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    task_yaml(folder)
    return folder


@pytest.fixture(scope="module")
def hf_scores(tasks_dir, default_model_path):
    return evaluate("hf", f"pretrained={default_model_path},dtype=float32,device=cpu", tasks_dir)


@pytest.mark.parametrize("tokenized", [True, False])
def test_lm_eval_scores_through_the_server_equal_its_hf_backend(served, tasks_dir, hf_scores, default_model_path,
                                                               tokenized):
    acc_hf, ll_hf = hf_scores
    args = (f"model=hybrid_llm,base_url={served}/v1/completions,tokenizer_backend=huggingface,"
            f"tokenizer={default_model_path},tokenized_requests={tokenized},num_concurrent=2,max_retries=1,"
            "batch_size=4")
    acc, ll = evaluate("local-completions", args, tasks_dir)
    assert len(ll) == len(ll_hf) == 10 and all(len(a) == len(b) == 4 for a, b in zip(ll, ll_hf))
    gaps = [abs(a - b) for x, y in zip(ll, ll_hf) for a, b in zip(x, y)]
    assert max(gaps) < TOLERANCE, (max(gaps), ll, ll_hf)
    assert acc == acc_hf
    assert 0 < acc_hf < 1                  # the task separates right from wrong answers on this model
