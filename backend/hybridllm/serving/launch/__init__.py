"""The launcher: the model repository (repository), tritonserver's process (server) and each engine
instance's CPU share (instances)."""
