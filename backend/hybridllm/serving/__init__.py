"""Serving, in three parts that import one way (openai -> launch's names only; launch -> triton's
options): triton/ runs inside tritonserver's Python backend, launch/ writes the repository and starts
tritonserver, openai/ is a separate client process in front of it."""
