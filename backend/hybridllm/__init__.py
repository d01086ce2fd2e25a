"""hybridllm: serve decoder LLMs with the CPU as a second compute device."""
from .config import EngineConfig
from .sampling_params import SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "EngineConfig", "default_model", "__version__"]


def __getattr__(name):
    # Lazy, so `import hybridllm` (e.g. for the CLI or converters) does not load torch-heavy modules.
    if name == "LLM":
        from .llm import LLM
        return LLM
    if name == "default_model":
        from .models.default import default_model
        return default_model
    raise AttributeError(f"module 'hybridllm' has no attribute {name!r}")
