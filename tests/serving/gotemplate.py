"""Renders the Helm chart's templates with the small part of Go templates (and Helm's functions) the
chart uses, for the chart's tests: no helm binary installs from the package registries this project
may use (docs/deploy.md). Anything outside the subset raises, so the chart cannot drift out of it.

Supported: {{ }} with -trimming, comments, if / else / end, define, pipelines (|), dotted fields of
. and $, string and integer literals, and include, printf (%s %v %d), toYaml, nindent, indent,
quote, trunc, trimSuffix, default, not, and, or, eq.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

_TAG = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


class TemplateError(ValueError):
    pass


def _lex(text: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", s)], with Go's whitespace trimming applied."""
    out, pos = [], 0
    for m in _TAG.finditer(text):
        before = text[pos:m.start()]
        if m.group(1):
            before = before.rstrip()
        out.append(("text", before))
        out.append(("action", m.group(2)))
        pos = m.end()
        if m.group(3):
            rest = text[pos:]
            pos += len(rest) - len(rest.lstrip())
    out.append(("text", text[pos:]))
    return out


def _parse(tokens, i=0, stop=("end",)):
    """-> (nodes, index after the stopping action, the stopping keyword)."""
    nodes = []
    while i < len(tokens):
        kind, s = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", s))
            continue
        if s.startswith("/*"):
            continue
        word = s.split(None, 1)[0] if s else ""
        if word in stop:
            return nodes, i, word
        if word == "if":
            then, i, how = _parse(tokens, i, ("else", "end"))
            other = []
            if how == "else":
                other, i, _ = _parse(tokens, i, ("end",))
            nodes.append(("if", s[2:].strip(), then, other))
        elif word == "define":
            body, i, _ = _parse(tokens, i, ("end",))
            nodes.append(("define", shlex.split(s)[1], body))
        elif word in ("range", "with", "block", "template", "else", "end"):
            raise TemplateError(f"{{{{ {s} }}}} is outside the supported subset")
        else:
            nodes.append(("action", s))
    if stop != ("end",) or i < len(tokens):
        pass
    return nodes, i, None


def _truthy(v) -> bool:
    return bool(v) if v is not None else False


def _to_yaml(v) -> str:
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=False).rstrip("\n")


def _indent(n, s) -> str:
    return "\n".join((" " * n + line) if line else line for line in str(s).split("\n"))


def _printf(fmt, *args) -> str:
    return re.sub(r"%[svd]", "{}", fmt).format(*[_str(a) for a in args])


def _str(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


class Chart:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta = yaml.safe_load((self.folder / "Chart.yaml").read_text())
        self.values = yaml.safe_load((self.folder / "values.yaml").read_text())
        self.defines: dict[str, list] = {}
        for path in sorted((self.folder / "templates").glob("_*.tpl")):
            self._collect(_parse(_lex(path.read_text()))[0])

    def _collect(self, nodes):
        for node in nodes:
            if node[0] == "define":
                self.defines[node[1]] = node[2]

    def render(self, release: str = "demo", namespace: str = "default", overrides: dict | None = None) -> dict[str, str]:
        """{template file name: rendered text} for every template but the helpers."""
        values = _merge(self.values, overrides or {})
        ctx = {"Values": values, "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
               "Chart": {"Name": self.meta["name"], "Version": self.meta["version"],
                         "AppVersion": self.meta.get("appVersion", "")}}
        out = {}
        for path in sorted((self.folder / "templates").iterdir()):
            if path.name.startswith("_"):
                continue
            nodes = _parse(_lex(path.read_text()))[0]
            self._collect(nodes)
            out[path.name] = self._run(nodes, ctx)
        return out

    def _run(self, nodes, ctx) -> str:
        parts = []
        for node in nodes:
            if node[0] == "text":
                parts.append(node[1])
            elif node[0] == "action":
                parts.append(_str(self._pipeline(node[1], ctx)))
            elif node[0] == "if":
                parts.append(self._run(node[2] if _truthy(self._pipeline(node[1], ctx)) else node[3], ctx))
        return "".join(parts)

    def _pipeline(self, text: str, ctx):
        value, first = None, True
        for command in _split_pipes(text):
            args = [self._arg(a, ctx) for a in _words(command)]
            if not first:
                args.append(value)
            value = self._call(args, ctx) if first or callable(args[0]) else None
            if not first and not callable(args[0]):
                raise TemplateError(f"{command!r} in a pipeline is not a function")
            first = False
        return value

    def _call(self, args, ctx):
        head = args[0]
        if callable(head):
            return head(*args[1:])
        if len(args) > 1:
            raise TemplateError(f"{head!r} takes no arguments")
        return head

    def _arg(self, word: str, ctx):
        if word.startswith('"'):
            return word[1:-1].encode().decode("unicode_escape")
        if re.fullmatch(r"-?\d+", word):
            return int(word)
        if word in (".", "$"):
            return ctx
        if word.startswith((".", "$.")):
            v = ctx
            for part in word.lstrip("$").strip(".").split("."):
                v = v.get(part) if isinstance(v, dict) else None
            return v
        funcs = {
            "include": lambda name, c: self._run(self.defines[name], c),
            "printf": _printf, "toYaml": _to_yaml, "nindent": lambda n, s: "\n" + _indent(n, s),
            "indent": _indent, "quote": lambda s: '"' + _str(s).replace('"', '\\"') + '"',
            "trunc": lambda n, s: s[:n], "trimSuffix": lambda suf, s: s[:-len(suf)] if suf and s.endswith(suf) else s,
            "default": lambda d, v=None: v if _truthy(v) else d, "not": lambda v: not _truthy(v),
            "and": lambda *vs: all(_truthy(v) for v in vs), "or": lambda *vs: any(_truthy(v) for v in vs),
            "eq": lambda a, b: a == b,
        }
        if word not in funcs:
            raise TemplateError(f"{word!r} is outside the supported subset")
        return funcs[word]


def _split_pipes(text: str) -> list[str]:
    parts, cur, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "|" and not quoted:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


def _words(command: str) -> list[str]:
    if "(" in command:
        raise TemplateError(f"parentheses in {command!r} are outside the supported subset")
    return re.findall(r'"(?:[^"\\]|\\.)*"|\S+', command)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out
