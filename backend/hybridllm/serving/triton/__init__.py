"""The Triton adapter: TritonPythonModel (model.py), the engine thread (engine_loop), response delivery,
request parsing (request_io), the model parameters (options) and metrics. Only model.py and metrics.py
touch Triton's Python API, and only at load time."""
