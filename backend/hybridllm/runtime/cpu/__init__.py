"""The OpenVINO CPU data plane: cpu_only's linear graphs, their weight nodes and their precision."""
