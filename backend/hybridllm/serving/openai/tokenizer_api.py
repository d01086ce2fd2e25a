"""The model's tokenizer in the frontend, and vLLM's tokenizer endpoints over it.

POST /tokenize ({prompt, add_special_tokens=true} or {messages, add_generation_prompt, tools}: the chat
rendered and tokenized without added special tokens, as /v1/chat/completions does) -> {count, max_model_len,
tokens, token_strs}; POST /detokenize ({tokens}) -> {prompt}; GET /tokenizer_info -> the special tokens,
the chat template and model_max_length. lm-eval's remote tokenizer and `vllm bench serve` call these.
The frontend tokenizes prompts itself (the same tokenizer.json as the engine), so it knows every prompt
token for echo and logprobs.
"""
from __future__ import annotations

import json
from pathlib import Path

from fastapi import Request     # at module level: FastAPI resolves the routes' annotations here

from .protocol import APIError, _messages, _tools


class ModelTokenizer:
    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer
        folder = Path(folder)
        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        cfg_path = folder / "tokenizer_config.json"
        self.config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        model_cfg = folder / "config.json"
        mc = json.loads(model_cfg.read_text()) if model_cfg.is_file() else {}
        self.max_position_embeddings = mc.get("max_position_embeddings")
        self.vocab_size = mc.get("vocab_size") or self.tok.get_vocab_size(with_added_tokens=True)
        self._texts: dict[int, str] = {}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def token_text(self, t: int) -> str:
        if t not in self._texts:
            self._texts[t] = self.tok.decode([t], skip_special_tokens=False)
        return self._texts[t]

    def special(self, key: str) -> str | None:
        v = self.config.get(key)
        return v.get("content") if isinstance(v, dict) else v


def add_tokenizer_routes(app, tokenizer: ModelTokenizer | None, render_chat, max_model_len):
    """render_chat(messages, add_generation_prompt, tools) -> text; max_model_len: async () -> int | None."""

    def need() -> ModelTokenizer:
        if tokenizer is None:
            raise APIError(400, "this frontend was started without the model folder, so it has no tokenizer")
        return tokenizer

    async def body_of(request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise APIError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        return body

    @app.post("/tokenize")
    async def tokenize(request: Request):
        tok, body = need(), await body_of(request)
        if "messages" in body:
            text = render_chat(_messages(body["messages"]), bool(body.get("add_generation_prompt", True)),
                               _tools(body))
            add = body.get("add_special_tokens", False)
        else:
            text, add = body.get("prompt"), body.get("add_special_tokens", True)
            if not isinstance(text, str):
                raise APIError(400, "prompt: must be a string (or give messages)", "prompt")
        if not isinstance(add, bool):
            raise APIError(400, f"add_special_tokens: must be true or false, got {add!r}", "add_special_tokens")
        ids = tok.encode(text, add)
        out = {"count": len(ids), "max_model_len": await max_model_len(), "tokens": ids}
        if body.get("return_token_strs"):
            out["token_strs"] = [tok.tok.id_to_token(t) for t in ids]
        return out

    @app.post("/detokenize")
    async def detokenize(request: Request):
        tok, body = need(), await body_of(request)
        ids = body.get("tokens")
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise APIError(400, "tokens: must be a list of token ids", "tokens")
        bad = [t for t in ids if not 0 <= t < tok.vocab_size]
        if bad:
            raise APIError(400, f"tokens: {bad[0]} is not a token id in [0, {tok.vocab_size})", "tokens")
        return {"prompt": tok.decode(ids)}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        tok = need()
        info = {k: tok.special(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        info.update(tokenizer_class=tok.config.get("tokenizer_class", "PreTrainedTokenizerFast"),
                    chat_template=tok.config.get("chat_template"), model_max_length=await max_model_len(),
                    vocab_size=tok.vocab_size)
        return info
