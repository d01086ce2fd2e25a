"""A stand-in for triton_python_backend_utils: just the API hybridllm.serving uses, recording
what the model sends, so the adapter can be tested in process and fast."""
from __future__ import annotations

import json
import threading

import numpy as np

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class TritonModelException(Exception):
    pass


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = INTERNAL):
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class Tensor:
    def __init__(self, name: str, array: np.ndarray):
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class InferenceResponse:
    def __init__(self, output_tensors=(), error: TritonError | None = None):
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


class Logger:
    lines: list[tuple[str, str]] = []

    @classmethod
    def log_info(cls, msg):
        cls.lines.append(("info", msg))

    @classmethod
    def log_warn(cls, msg):
        cls.lines.append(("warn", msg))

    @classmethod
    def log_error(cls, msg):
        cls.lines.append(("error", msg))


class ResponseSender:
    def __init__(self):
        self.responses: list[tuple[InferenceResponse, int]] = []
        self.cancelled = False
        self.done = threading.Event()
        self.sent_after_final = 0

    def send(self, response=None, flags: int = 0):
        if self.done.is_set():
            self.sent_after_final += 1
        self.responses.append((response, flags))
        if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self.done.set()

    def is_cancelled(self) -> bool:
        return self.cancelled

    @property
    def finals(self) -> int:
        return sum(1 for _, f in self.responses if f & TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    @property
    def errors(self) -> list[TritonError]:
        return [r.error for r, _ in self.responses if r is not None and r.error is not None]

    def output(self, name: str) -> list:
        return [r.outputs[name] for r, _ in self.responses if r is not None and name in r.outputs]


class InferenceRequest:
    def __init__(self, inputs: dict[str, np.ndarray], request_id: str = "", parameters: dict | None = None,
                 requested: tuple[str, ...] = ()):
        self.inputs = inputs
        self.sender = ResponseSender()
        self._id, self._params, self._requested = request_id, parameters or {}, requested

    def get_response_sender(self) -> ResponseSender:
        return self.sender

    def request_id(self) -> str:
        return self._id

    def parameters(self) -> str:
        return json.dumps(self._params)

    def requested_output_names(self):
        return list(self._requested)


def get_input_tensor_by_name(request: InferenceRequest, name: str):
    arr = request.inputs.get(name)
    return None if arr is None else Tensor(name, arr)


def using_decoupled_model_transaction_policy(model_config: dict) -> bool:
    return model_config.get("model_transaction_policy", {}).get("decoupled", False)


class Metric:
    def __init__(self, family: "MetricFamily", labels: dict, buckets=None):
        self.family, self.labels, self.buckets = family, labels, buckets
        self.value = 0.0
        self.observations: list[float] = []

    def increment(self, v):
        assert self.family.kind == MetricFamily.COUNTER and v >= 0
        self.value += v

    def set(self, v):
        assert self.family.kind == MetricFamily.GAUGE
        self.value = v

    def observe(self, v):
        assert self.family.kind == MetricFamily.HISTOGRAM
        self.observations.append(v)


class MetricFamily:
    COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
    families: dict[str, "MetricFamily"] = {}

    def __init__(self, name: str, description: str, kind: str):
        self.name, self.description, self.kind = name, description, kind
        self.metrics: list[Metric] = []
        MetricFamily.families[name] = self

    def Metric(self, labels: dict, buckets=None) -> Metric:
        if (buckets is None) != (self.kind != MetricFamily.HISTOGRAM):
            raise TritonModelException("histograms need buckets; other kinds take none")
        m = Metric(self, labels, buckets)
        self.metrics.append(m)
        return m

    def value(self, **labels) -> float:
        return sum(m.value for m in self.metrics if labels.items() <= m.labels.items())
