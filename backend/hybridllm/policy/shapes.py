"""ModelShape and BatchShape: what the cost model needs to know about a model and a step."""
from __future__ import annotations

from dataclasses import dataclass

from ..dtypes import BYTES as DTYPE_BYTES
from ..models.config import ModelConfig



@dataclass(frozen=True)
class ModelShape:
    name: str
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    weight_bytes_per_param: int = 4     # the weights' dtype
    act_bytes: int = 4                  # the activations' dtype
    gated_mlp: bool = True              # SwiGLU (Llama) vs a plain two-matrix MLP (OPT)
    tied_embeddings: bool = False       # the LM head is the embedding matrix (stored once)

    def __post_init__(self):
        for name in ("num_layers", "hidden", "num_heads", "num_kv_heads", "head_dim", "intermediate", "vocab"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelShape.{name} must be >= 1")

    @property
    def gemms(self) -> tuple[tuple[int, int], ...]:
        """(out_features, in_features) of each linear layer in one decoder layer."""
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        up = 2 * self.intermediate if self.gated_mlp else self.intermediate
        return ((q + 2 * kv, self.hidden), (self.hidden, q), (up, self.hidden), (self.hidden, self.intermediate))

    @property
    def layer_params(self) -> int:
        return sum(n * k for n, k in self.gemms) + 2 * self.hidden

    @property
    def layer_weight_bytes(self) -> int:
        return self.layer_params * self.weight_bytes_per_param

    @property
    def embed_bytes(self) -> int:
        return self.vocab * self.hidden * self.weight_bytes_per_param

    @property
    def weight_bytes(self) -> int:
        """Bytes the weights occupy: the layers, the embedding, and the LM head unless it is tied."""
        return self.num_layers * self.layer_weight_bytes + (1 if self.tied_embeddings else 2) * self.embed_bytes

    def kv_bytes_per_token(self, kv_bytes: int) -> int:
        """K and V of one token over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * kv_bytes

    @classmethod
    def from_config(cls, cfg: ModelConfig, dtype: str = "float32", name: str = "model") -> "ModelShape":
        b = DTYPE_BYTES[dtype]
        return cls(name, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                   cfg.head_dim, cfg.intermediate_size, cfg.vocab_size, b, b,
                   tied_embeddings=cfg.tie_word_embeddings)


@dataclass(frozen=True)
class BatchShape:
    """A workload: `batch` requests of `input_len` prompt tokens each, generating `output_len` tokens."""
    batch: int
    input_len: int
    output_len: int
    kv_dtype: str = "f32"

    def __post_init__(self):
        for name in ("batch", "input_len", "output_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"BatchShape.{name} must be an integer >= 1, got {v!r}")
        if self.kv_dtype not in DTYPE_BYTES:
            raise ValueError(f"BatchShape.kv_dtype: {self.kv_dtype!r} is not one of {', '.join(DTYPE_BYTES)}")

    @property
    def kv_bytes(self) -> int:
        return DTYPE_BYTES[self.kv_dtype]

    @property
    def max_context(self) -> int:
        return self.input_len + self.output_len

    @property
    def mean_decode_context(self) -> float:
        return self.input_len + (self.output_len - 1) / 2
