"""The OpenAI-compatible frontend: a separate Triton client (FastAPI) that never touches the engine;
the OpenAI body checks (protocol), chat templates and the gRPC client."""
