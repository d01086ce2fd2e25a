"""Llama-family decoder (Llama, Mistral, Qwen2) as plain tensors.

Attention is not in here: a layer is split into `attn_inputs` (norm, QKV
projection, RoPE) and `attn_finish` (output projection, MLP, residuals), so
the runtime can run the attention itself on whichever device holds the KV.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from ..dtypes import torch_dtype
from ..converters.gguf_quant import QUANT_FILE
from ..kernels import DeviceOps, rms_norm
from .config import ModelConfig
from .random_weights import RandomCheckpoint, is_random
from .rope import RotaryEmbedding



@dataclass
class LayerWeights:
    input_norm: torch.Tensor          # [hidden]
    qkv: torch.Tensor                 # [(H + 2 * KVH) * D, hidden]
    qkv_bias: torch.Tensor | None     # [(H + 2 * KVH) * D]
    o_proj: torch.Tensor              # [hidden, H * D]
    post_norm: torch.Tensor           # [hidden]
    gate_up: torch.Tensor             # [2 * intermediate, hidden]
    down: torch.Tensor                # [hidden, intermediate]


class LlamaModel:
    def __init__(self, cfg: ModelConfig, layers: list[LayerWeights], embed: torch.Tensor,
                 norm: torch.Tensor, lm_head: torch.Tensor, device: torch.device, dtype: torch.dtype,
                 ops: DeviceOps | None = None):
        self.cfg = cfg
        self.layers = layers
        self.embed_tokens = embed     # [vocab, hidden]
        self.norm = norm              # [hidden]
        self.lm_head = lm_head        # [vocab, hidden]; the same tensor as embed when tied
        self.device = device
        self.dtype = dtype
        self.rope = RotaryEmbedding(cfg, device, dtype)
        self.q_size = cfg.num_attention_heads * cfg.head_dim
        self.kv_size = cfg.num_key_value_heads * cfg.head_dim
        # The small ops of attn_inputs / attn_finish: torch, or the fused Triton kernels on CUDA (the
        # factory's choice, made before loading).
        self.ops = ops or DeviceOps("torch")

    # -- the pieces the runtime strings together ---------------------------------

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.embed_tokens)          # [T, hidden]

    def rope_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's RoPE cos/sin [T, 1, D], built once per step for every layer's attn_inputs."""
        return self.rope.tables(positions)

    def attn_inputs(self, i: int, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                    w: LayerWeights | None = None):
        """h: [T, hidden], rope: rope_tables(positions) -> q [T, H, D], k [T, KVH, D], v [T, KVH, D].

        w overrides layer i's weights (e.g. a staging copy streamed in by gpu_offload)."""
        w = w or self.layers[i]
        cfg = self.cfg
        x, _ = self.ops.add_rms_norm(h, None, w.input_norm, cfg.rms_norm_eps)
        qkv = self.ops.linear(x, w.qkv, w.qkv_bias)               # [T, (H + 2 * KVH) * D]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, cfg.num_attention_heads, cfg.head_dim)
        k = k.view(-1, cfg.num_key_value_heads, cfg.head_dim)
        v = v.view(-1, cfg.num_key_value_heads, cfg.head_dim)
        q, k = self.rope.apply(q, k, rope)
        return q, k, v

    def attn_finish(self, i: int, h: torch.Tensor, attn_out: torch.Tensor,
                    w: LayerWeights | None = None) -> torch.Tensor:
        """h: [T, hidden], attn_out: [T, H * D] -> the layer's output [T, hidden]."""
        w = w or self.layers[i]
        x, h = self.ops.add_rms_norm(h, self.ops.linear(attn_out, w.o_proj), w.post_norm, self.cfg.rms_norm_eps)
        return h + F.linear(self.ops.silu_mul(F.linear(x, w.gate_up)), w.down)   # [T, hidden]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h: [S, hidden] (last token of each sampled sequence) -> [S, vocab] in float32."""
        x = rms_norm(h, self.norm, self.cfg.rms_norm_eps)
        return F.linear(x, self.lm_head).float()

    # -- loading ---------------------------------------------------------------

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu",
             dtype: str = "float32", layer_device: str | torch.device | None = None,
             ops: DeviceOps | None = None) -> "LlamaModel":
        """layer_device puts the decoder layers elsewhere (host memory for gpu_offload); ops: the device's
        small ops (default torch's)."""
        folder = Path(folder)
        cfg = ModelConfig.from_folder(folder)
        tdtype = torch_dtype(dtype)          # names the known dtypes if it is not one
        device = torch.device(device)
        # quantized.safetensors holds a GGUF's integer codes for the CPU data plane (models/quantized.py).
        files = sorted(f for f in folder.glob("*.safetensors") if f.name != QUANT_FILE)
        if is_random(folder):       # a benchmark's recipe: tensors drawn on the GPU, never on disk
            handles = [RandomCheckpoint(folder, cfg)]
        elif not files:
            raise FileNotFoundError(f"model folder {folder}: no *.safetensors weights found")
        else:
            # safe_open memory-maps the file; only the tensors we touch are read.
            handles = [safe_open(str(f), framework="pt", device="cpu") for f in files]
        where = {name: h for h in handles for name in h.keys()}

        ldev = torch.device(layer_device) if layer_device is not None else device

        def get(name: str, required: bool = True, dev: torch.device = device) -> torch.Tensor | None:
            if name not in where:
                if required:
                    raise ValueError(f"model folder {folder}: weight {name!r} is missing")
                return None
            return where[name].get_tensor(name).to(device=dev, dtype=tdtype)

        def cat(*names: str) -> torch.Tensor:
            return torch.cat([get(n, dev=ldev) for n in names], dim=0).contiguous()

        layers = []
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            bias = None
            if cfg.attention_bias:
                bias = cat(a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias")
            layers.append(LayerWeights(
                input_norm=get(p + "input_layernorm.weight", dev=ldev),
                qkv=cat(a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"),
                qkv_bias=bias,
                o_proj=get(a + "o_proj.weight", dev=ldev),
                post_norm=get(p + "post_attention_layernorm.weight", dev=ldev),
                gate_up=cat(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
                down=get(p + "mlp.down_proj.weight", dev=ldev),
            ))
        embed = get("model.embed_tokens.weight")
        if ldev.type == "cpu" and device.type == "cuda":
            # Pinned host memory lets the copy stream move layers asynchronously.
            for w in layers:
                for f, t in vars(w).items():
                    if t is not None:
                        setattr(w, f, t.pin_memory())
        lm_head = get("lm_head.weight", required=not cfg.tie_word_embeddings)
        if lm_head is None:
            lm_head = embed
        return cls(cfg, layers, embed, get("model.norm.weight"), lm_head, device, tdtype, ops)

    @classmethod
    def random(cls, cfg: ModelConfig, device: torch.device, dtype: torch.dtype,
               separate_head: bool = False) -> "LlamaModel":
        """Random weights of cfg's shape on `device`, for probes and benchmarks (speed depends on shapes only).
        The LM head is the embedding unless separate_head."""
        H, KVH, D, hid, inter = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size,
                                 cfg.intermediate_size)

        def w(*shape):
            return torch.randn(*shape, device=device, dtype=dtype) * 0.02

        def ones():
            return torch.ones(hid, device=device, dtype=dtype)

        layers = [LayerWeights(ones(), w((H + 2 * KVH) * D, hid), w((H + 2 * KVH) * D) if cfg.attention_bias else None,
                               w(hid, H * D), ones(), w(2 * inter, hid), w(hid, inter))
                  for _ in range(cfg.num_hidden_layers)]
        embed = w(cfg.vocab_size, hid)
        head = w(cfg.vocab_size, hid) if separate_head else embed
        return cls(cfg, layers, embed, ones(), head, torch.device(device), dtype)

    @property
    def layers_on_host(self) -> bool:
        """Whether the decoder layers live in host memory (all of them: on the CPU, or under gpu_offload)."""
        return bool(self.layers) and all(t is None or t.device.type == "cpu"
                                         for w in self.layers for t in vars(w).values())

    def host_view(self) -> "LlamaModel":
        """This model on the host, sharing every tensor already there (a CPU model is returned as is)."""
        if self.device.type == "cpu":
            return self
        if not self.layers_on_host:
            raise ValueError("host_view: the decoder layers are on the device; load a host copy instead")
        head = self.embed_tokens.cpu() if self.lm_head is self.embed_tokens else self.lm_head.cpu()
        embed = head if self.lm_head is self.embed_tokens else self.embed_tokens.cpu()
        return LlamaModel(self.cfg, self.layers, embed, self.norm.cpu(), head, torch.device("cpu"), self.dtype)

    def release_layers(self) -> None:
        """Drops the decoder layers' weights once compiled graphs hold their own copy; the embedding,
        final norm, LM head and RoPE tables stay (a step still embeds with them)."""
        self.layers = []

    @property
    def weight_bytes(self) -> int:
        return self.resident_bytes + sum(layer_bytes(w) for w in self.layers)

    @property
    def resident_bytes(self) -> int:
        """Embedding, final norm and LM head: what stays on the device under gpu_offload."""
        ts = [self.embed_tokens, self.norm]
        if self.lm_head is not self.embed_tokens:
            ts.append(self.lm_head)
        return sum(t.numel() * t.element_size() for t in ts)


def layer_bytes(w: LayerWeights) -> int:
    return sum(t.numel() * t.element_size() for t in vars(w).values() if t is not None)


