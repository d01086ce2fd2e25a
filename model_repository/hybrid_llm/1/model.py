# Triton loads this file; the model itself is hybridllm.serving.triton_model.
from hybridllm.serving.triton_model import TritonPythonModel  # noqa: F401
