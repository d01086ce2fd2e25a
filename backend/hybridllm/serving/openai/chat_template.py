"""A model's chat template (tokenizer_config.json's `chat_template`, carried over from a GGUF's
`tokenizer.chat_template` by the converter), rendered in a sandboxed jinja2 environment the way
transformers' apply_chat_template does: `messages`, `add_generation_prompt`, the special tokens,
`raise_exception`, and `tojson` without escaping.
"""
from __future__ import annotations

import json
from pathlib import Path


class NoChatTemplate(ValueError):
    pass


class ChatTemplate:
    def __init__(self, source: str, special: dict[str, str]):
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = raise_exception
        env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
        self.template = env.from_string(source)
        self.special = special

    @classmethod
    def from_folder(cls, folder: str | Path) -> "ChatTemplate":
        """Raises NoChatTemplate (naming the fix) when the model has none."""
        path = Path(folder) / "tokenizer_config.json"
        cfg = json.loads(path.read_text()) if path.is_file() else {}
        source = cfg.get("chat_template")
        if isinstance(source, list):        # [{name, template}]: transformers' named templates
            source = next((t["template"] for t in source if t.get("name") == "default"), None)
        if not source:
            raise NoChatTemplate(
                f"the model at {folder} has no chat template (tokenizer_config.json 'chat_template'); use "
                "/v1/completions with your own prompt format, or add a chat_template to tokenizer_config.json")
        special = {}
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = cfg.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            special[key] = value or ""
        return cls(source, special)

    def render(self, messages: list[dict], add_generation_prompt: bool = True, tools: list | None = None) -> str:
        """Messages as given (tool turns too: assistant tool_calls, role tool); tools as transformers passes
        them, to templates that use them (None: the variable is undefined, as there)."""
        from jinja2.exceptions import TemplateError
        extra = {"tools": tools} if tools is not None else {}
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        **self.special, **extra)
        except TemplateError as e:
            raise ValueError(f"messages: the model's chat template refused them: {e}") from None
        except (TypeError, ValueError, KeyError, AttributeError) as e:   # e.g. a template that adds null content
            raise ValueError(f"messages: the model's chat template cannot render them "
                             f"({type(e).__name__}: {e})") from None
