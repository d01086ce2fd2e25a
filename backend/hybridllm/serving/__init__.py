"""Triton serving: the TritonPythonModel adapter (triton_model), the engine thread (engine_loop),
request parsing (request_io), metrics, the model repository, the tritonserver runner (server) and
a gRPC client. Only triton_model and metrics touch Triton's Python API, and only at load time."""
