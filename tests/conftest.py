import os

import pytest

# Nothing may reach a model hub at test time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def default_model_path():
    from hybridllm.models.default import default_model
    return default_model(progress=False)


# Tests that load the real default model or start a real tritonserver take minutes together:
# they are `slow`, so `pytest -m "not slow"` is the quick loop.
_SLOW_FIXTURES = {"default_model_path", "triton"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
