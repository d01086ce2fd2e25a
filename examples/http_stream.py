"""Stream a generation over HTTP from a running `hybridllm serve` (Triton's generate_stream, SSE).

    hybridllm serve &                      # or: make serve
    python examples/http_stream.py "Once upon a time," --max-tokens 48

Only the standard library: POST the inputs as JSON, read one `data: {...}` event per token.
"""
from __future__ import annotations

import argparse
import http.client
import json
import sys


def stream(host: str, port: int, model: str, prompt: str, params: dict):
    """Yields each event (a dict with text_output, output_ids, finish_reason, ...) as it arrives."""
    body = {"text_input": prompt, "stream": True, "sampling_parameters": json.dumps(params)}
    conn = http.client.HTTPConnection(host, port, timeout=600)
    try:
        conn.request("POST", f"/v2/models/{model}/generate_stream", json.dumps(body),
                     {"Content-Type": "application/json", "Accept": "text/event-stream"})
        resp = conn.getresponse()
        for raw in resp:  # the response is read line by line, as the server flushes each event
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            event = json.loads(line[len("data:"):])
            if "error" in event:  # bad input: the message names the field and the limit
                raise RuntimeError(event["error"])
            yield event
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prompt")
    ap.add_argument("--url", default="127.0.0.1:8000", help="HTTP address of the server")
    ap.add_argument("--model", default="hybrid_llm")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.0)
    args = ap.parse_args()
    host, port = args.url.rsplit(":", 1)
    params = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    sys.stdout.write(args.prompt)
    reason = None
    try:
        for event in stream(host, int(port), args.model, args.prompt, params):
            sys.stdout.write(event["text_output"])
            sys.stdout.flush()
            reason = event.get("finish_reason") or reason
    except (RuntimeError, OSError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    print(f"\n[finish_reason={reason}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
