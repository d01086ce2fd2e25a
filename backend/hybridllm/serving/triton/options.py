"""Model parameters in config.pbtxt <-> EngineConfig + ServingLimits.

Triton hands every parameter over as a string; this module is the one place that turns them into
typed options (and back), so `hybridllm serve`, the checked-in config.pbtxt and the model agree.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from ...config import EngineConfig, opt

# Options that only the serving layer uses (not engine options).
DEFAULT_MAX_TOKENS_NON_STREAM = 4096

# Fault injection (tests only): a request with this exact text_input makes the engine thread stall
# ("engine_stall") or die ("engine_death"), so the health checks can be tested against a real server.
FAULT_PROMPT = "__hybridllm_fault_injection__"
FAULTS = ("", "engine_stall", "engine_death")


@dataclass(frozen=True)
class ServingLimits:
    # stream=false holds the whole answer (and the client) until the end, so it gets a cap.
    max_tokens_non_stream: int = opt(DEFAULT_MAX_TOKENS_NON_STREAM, "max_tokens cap for stream=false")
    # Request-size caps, checked before any parsing or tokenizing; the prompt's token count is capped
    # by the engine's max_model_len.
    max_text_input_bytes: int = opt(1 << 20, "request-size cap: text_input bytes")
    max_input_ids: int = opt(1 << 17, "request-size cap: input_ids length")
    max_sampling_parameters_bytes: int = opt(1 << 16, "request-size cap: sampling_parameters bytes")
    max_stop: int = opt(16, "request-size cap: stop strings plus stop_token_ids")
    max_stop_length: int = opt(256, "request-size cap: characters per stop string")
    # The OpenAI frontend reads this from the model's config: one Triton request per choice.
    max_n: int = opt(16, "OpenAI frontend: the cap on n and best_of per prompt")
    # Engine health: it must outlast the longest real step (a max_num_batched_tokens prefill on a loaded CPU).
    engine_stall_timeout_s: int = opt(60, "the engine is not ready after this long without progress")
    # Tests only: "engine_stall" | "engine_death" make the engine thread stall or die on a request whose
    # text_input is engine_loop.FAULT_PROMPT. Empty (off) in every real deployment.
    fault_injection: str = opt("", "tests only", FAULTS)

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "fault_injection":
                if v not in FAULTS:
                    raise ValueError(f"fault_injection must be one of {FAULTS}, got {v!r}")
            elif not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{f.name} must be an integer >= 1, got {v!r}")


_ENGINE_FIELDS = {f.name: f for f in fields(EngineConfig)}
_LIMIT_FIELDS = {f.name: f for f in fields(ServingLimits)}
# Parameters Triton or the Python backend read themselves; they are not ours to reject.
_TRITON_PARAMETERS = {"EXECUTION_ENV_PATH", "FORCE_CPU_ONLY_INPUT_TENSORS"}


def _parse(name: str, annotation: str, text: str):
    """One parameter string -> the field's type; annotations are strings (postponed evaluation)."""
    optional = "None" in annotation
    if optional and text.strip().lower() in ("", "none", "null"):
        return None
    if annotation.startswith("bool"):
        if text.strip().lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"model parameter {name}: {text!r} is not true or false")
        return text.strip().lower() in ("true", "1")
    if annotation.startswith("int"):
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError(f"model parameter {name}: {text!r} is not an integer") from None
    return text


def _format(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def parse_parameters(params: dict) -> tuple[EngineConfig, ServingLimits]:
    """Triton's model_config["parameters"] ({key: {"string_value": s}}) -> typed options.

    Raises ValueError/TypeError naming the parameter, so a bad config fails the model load clearly.
    """
    engine: dict = {}
    limits: dict = {}
    for name, value in params.items():
        text = value.get("string_value", "") if isinstance(value, dict) else str(value)
        if name in _ENGINE_FIELDS:
            engine[name] = _parse(name, str(_ENGINE_FIELDS[name].type), text)
        elif name in _LIMIT_FIELDS:
            limits[name] = _parse(name, str(_LIMIT_FIELDS[name].type), text)
        elif name not in _TRITON_PARAMETERS:
            known = sorted(set(_ENGINE_FIELDS) | set(_LIMIT_FIELDS))
            raise ValueError(f"unknown model parameter {name!r}; known: {', '.join(known)}")
    return EngineConfig(**engine), ServingLimits(**limits)


def to_parameters(config: EngineConfig, limits: ServingLimits) -> dict[str, str]:
    """Typed options -> parameter strings, every field spelled out so the file documents them."""
    out = {name: _format(getattr(config, name)) for name in _ENGINE_FIELDS}
    out.update({name: _format(getattr(limits, name)) for name in _LIMIT_FIELDS})
    return out
