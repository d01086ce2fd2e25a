# Triton loads this file; the model itself is hybridllm.serving.triton.model.
from hybridllm.serving.triton.model import TritonPythonModel  # noqa: F401
