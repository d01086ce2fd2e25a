"""`hybridllm profile` and `hybridllm plan`. Heavy modules load inside the commands, so `hybridllm --help`
stays quick."""
from __future__ import annotations

import argparse

from ..config import WEIGHT_DTYPES


def add_subcommands(sub) -> None:
    prof = sub.add_parser("profile", help="measure this machine's hardware profile (JSON)")
    prof.add_argument("--model", default="default", help='"default", an HF folder or a .gguf file (layer shapes)')
    prof.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    prof.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    prof.add_argument("--weight-dtype", default="auto", choices=WEIGHT_DTYPES,
                      help="cpu_only's weights, which the host GEMMs are timed at (as the engine resolves it)")
    prof.add_argument("--out", default="profile.json")
    prof.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    prof.set_defaults(func=_cmd_profile)

    plan = sub.add_parser("plan", help="print each policy's estimated prefill/decode time and the choice")
    plan.add_argument("--batch", type=int, required=True)
    plan.add_argument("--input-len", type=int, required=True)
    plan.add_argument("--output-len", type=int, required=True)
    plan.add_argument("--model", default="default", help='"default", an HF folder, or a config.json')
    plan.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    plan.add_argument("--kv-dtype", default=None, help="f32, f16, bf16 or u8 (default: the dtype's)")
    plan.add_argument("--profile", default=None,
                      help="profile JSON or a reference name (h100-sxm-spr, h100-pcie-spr, a10g-epyc, t4-xeon8)")
    plan.add_argument("--device-memory-bytes", type=int, default=None, help="emulate a smaller GPU")
    plan.set_defaults(func=_cmd_plan)


def _model_config(model: str):
    """-> (ModelConfig, name, the model folder or None for a bare config.json)."""
    import json
    from pathlib import Path

    from ..models.config import ModelConfig
    from ..models.default import resolve_model
    p = Path(model)
    if p.is_file() and p.suffix == ".json":
        return ModelConfig.from_dict(json.loads(p.read_text())), p.stem, None
    path = resolve_model(model)
    return ModelConfig.from_folder(path), path.name, path


def _cmd_profile(args: argparse.Namespace) -> int:
    from ..runtime.cpu.host_precision import host_precision
    from .measure import measure
    from .store import save_profile
    mc, _, path = _model_config(args.model)
    prof = measure(mc, args.dtype, args.device, progress=not args.quiet,
                   host_linear=host_precision(args.weight_dtype, path))
    save_profile(prof, args.out)
    print(f"wrote {args.out}: {prof.device_name}; host read {prof.host_memory_bandwidth / 1e9:.1f} GB/s, "
          f"h2d {prof.h2d_pinned / 1e9:.1f} GB/s ({prof.notes})")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from ..dtypes import KV_OF_MODEL
    from ..policy import BatchShape, ModelShape, Planner, format_plan
    from .measure import measure
    from .store import load_profile
    mc, name, _ = _model_config(args.model)
    profile = load_profile(args.profile) if args.profile else measure(mc, args.dtype, progress=True)
    kv = args.kv_dtype or KV_OF_MODEL[args.dtype]
    shape = ModelShape.from_config(mc, args.dtype, name=name)
    batch = BatchShape(args.batch, args.input_len, args.output_len, kv)
    plan = Planner(shape, profile, device_memory_bytes=args.device_memory_bytes).plan(batch)
    print(f"model {name} ({shape.weight_bytes / 2**30:.2f} GiB weights), profile {profile.name} "
          f"[{profile.source}], batch={batch.batch} input={batch.input_len} output={batch.output_len} kv={kv}")
    print(format_plan(plan))
    return 0
