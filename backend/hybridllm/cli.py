"""The `hybridllm` command line."""
from __future__ import annotations

import argparse
import logging
import sys

from .cli_args import add_config_args, config_kwargs
from .config import EngineConfig
from .profiling.cli import add_subcommands as add_profiling_subcommands

RUN_EXCLUDE = ("seed",)                   # `run --seed` is the request's sampling seed


def _cmd_run(args) -> int:
    from .llm import LLM
    from .sampling_params import SamplingParams

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, stop=tuple(args.stop or ()),
                            ignore_eos=args.ignore_eos)
    options = config_kwargs(args, EngineConfig, RUN_EXCLUDE)
    tracer = None
    if args.trace:
        from .runtime import Tracer
        tracer = Tracer()
    llm = LLM(model=options.pop("model", "default"), policy=options.pop("policy", "auto"), tracer=tracer, **options)
    if args.batch > 1:     # a batch of copies, e.g. to see NEO's device and host lanes in the trace
        outs = llm.generate([args.prompt] * args.batch, params)
        print(args.prompt + outs[0].text + f"\n[finish_reason={outs[0].finish_reason}, batch={args.batch}]")
        if tracer:
            tracer.save(args.trace)
            print(f"trace: {args.trace} (open in https://ui.perfetto.dev)", file=sys.stderr)
        return 0
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    reason = None
    for delta in llm.stream(args.prompt, params):
        out.write(delta.text)
        out.flush()
        reason = delta.finish_reason
    out.write(f"\n[finish_reason={reason}]\n")
    if tracer:
        tracer.save(args.trace)
        print(f"trace: {args.trace} (open in https://ui.perfetto.dev)", file=sys.stderr)
    return 0


def _cmd_convert(args) -> int:
    from hybridllm.converters import convert

    path = convert(args.src, args.out, progress=not args.quiet)
    print(path)
    return 0


SERVE_LIMITS_EXCLUDE = ("fault_injection",)     # tests only: a model parameter, never a flag


def _cmd_serve(args) -> int:
    from .serving.launch.server import serve
    from .serving.triton.options import ServingLimits

    config = EngineConfig(**config_kwargs(args, EngineConfig))
    limits = ServingLimits(**config_kwargs(args, ServingLimits, SERVE_LIMITS_EXCLUDE))
    return serve(config, limits, host=args.host,
                 http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                 workdir=args.workdir, ready_timeout=args.ready_timeout, log_file=args.log_file,
                 openai_port=args.openai_port, instance_count=args.instance_count,
                 shm_region_prefix_name=args.shm_region_prefix_name)


def _cmd_openai(args) -> int:
    from .models.default import resolve_model
    from .serving.openai.frontend import run_frontend
    folder = resolve_model(args.model) if args.model else None
    print(f"hybridllm: OpenAI API on http://{args.host}:{args.port}/v1 -> Triton gRPC {args.triton_url}", flush=True)
    run_frontend(args.triton_url, folder, host=args.host, port=args.port,
                 served_model_name=args.served_model_name, metrics_url=args.triton_metrics_url).run()
    return 0


def _cmd_generate(args) -> int:
    from .serving.openai.client import main_generate

    return main_generate(args)


def _add_sampling(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("--max-tokens", type=int, default=max_tokens)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hybridllm", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true", help="log engine decisions")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate text in this process and stream it to stdout")
    run.add_argument("prompt")
    _add_sampling(run, max_tokens=64)
    run.add_argument("--batch", type=int, default=1, help="run this many copies of the prompt together")
    add_config_args(run, EngineConfig, RUN_EXCLUDE)
    run.add_argument("--trace", default=None, help="write a Chrome trace JSON of the steps (device and host lanes)")
    run.set_defaults(func=_cmd_run)

    conv = sub.add_parser("convert", help="GGUF file or HF folder -> HF folder with model.safetensors")
    conv.add_argument("src")
    conv.add_argument("out")
    conv.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    conv.set_defaults(func=_cmd_convert)

    srv = sub.add_parser("serve", help="build the model repository and run tritonserver in the foreground")
    add_config_args(srv, EngineConfig)
    from .serving.triton.options import ServingLimits
    add_config_args(srv, ServingLimits, SERVE_LIMITS_EXCLUDE)
    srv.add_argument("--instance-count", type=int, default=1,
                     help="engines in this server (instance_group count); each takes an equal share of the cores")
    srv.add_argument("--shm-region-prefix-name", default=None,
                     help="the Python backend's /dev/shm prefix; distinct per server on one host (default: unique)")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for every interface)")
    srv.add_argument("--http-port", type=int, default=8000)
    srv.add_argument("--grpc-port", type=int, default=8001)
    srv.add_argument("--metrics-port", type=int, default=8002)
    srv.add_argument("--openai-port", type=int, default=9000, help="the OpenAI-compatible API (0: off)")
    srv.add_argument("--workdir", default=None, help="where the repository is built (default: the cache)")
    srv.add_argument("--log-file", default=None, help="tritonserver log (default: this terminal)")
    srv.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for the model to load")
    srv.set_defaults(func=_cmd_serve)

    oai = sub.add_parser("openai", help="the OpenAI-compatible API in front of a running Triton (gRPC)")
    oai.add_argument("--triton-url", default="127.0.0.1:8001", help="gRPC address of the Triton server")
    oai.add_argument("--model", default="default",
                     help="the served model's folder, .gguf or 'default': its chat template and tokenizer")
    oai.add_argument("--served-model-name", default="hybrid_llm", help="the model id clients send")
    oai.add_argument("--triton-metrics-url", default=None,
                     help="Triton's /metrics (e.g. http://127.0.0.1:8002/metrics): /health then checks engine health")
    oai.add_argument("--host", default="127.0.0.1")
    oai.add_argument("--port", type=int, default=9000)
    oai.set_defaults(func=_cmd_openai)

    gen = sub.add_parser("generate", help="ask a running server (gRPC) and print tokens as they arrive")
    gen.add_argument("prompt")
    gen.add_argument("--url", default="127.0.0.1:8001", help="gRPC address of the server")
    gen.add_argument("--model-name", default="hybrid_llm", help="Triton model name")
    gen.add_argument("--stream", action="store_true", help="a response per token (else one at the end)")
    _add_sampling(gen, max_tokens=64)
    gen.set_defaults(func=_cmd_generate)

    add_profiling_subcommands(sub)   # profile, plan
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, NotImplementedError) as e:
        print(f"hybridllm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
