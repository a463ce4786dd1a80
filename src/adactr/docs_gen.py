"""Reference pages generated from the code, so they cannot drift from it.

- :func:`cli_reference`: every ``adactr`` subcommand's ``--help``, rendered from the CLI's own parser.
- :func:`config_reference`: every config key (the frozen dataclasses under ``RunConfig``), with its type,
  default and the comment written beside the field in the source (STYLE 7: each default has a reason).
- :func:`docstring_to_markdown`: the reST habits of our docstrings (``:class:`X```, ``>>>`` examples,
  ``::`` literal blocks) as Markdown, for the API reference.

``docs/hooks.py`` calls these when ``mkdocs build`` runs; nothing in the library imports this module.

>>> keys = [k.key for k in config_keys()]
>>> "train.batch_size" in keys and "model.apg.rank" in keys
True
>>> print(docstring_to_markdown("Built by :class:`APGCondition`::\\n\\n    z = x"))
Built by `APGCondition`:
<BLANKLINE>
    z = x
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import json
import re
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any

HELP_WIDTH = 100  # fixed, so the page does not depend on the terminal of whoever builds it


# ---------------------------------------------------------------------------------------------------
# CLI


def cli_commands() -> dict[str, argparse.ArgumentParser]:
    """``{name: parser}`` for every subcommand of ``adactr``, in the order ``adactr --help`` lists them."""
    from adactr.cli import _parser

    parser = _parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subs[0].choices) if subs else {}


def _help_text(parser: argparse.ArgumentParser) -> str:
    parser.formatter_class = functools.partial(parser.formatter_class, width=HELP_WIDTH)
    return parser.format_help().rstrip()


def cli_reference() -> str:
    """The CLI reference page (Markdown): ``adactr --help``, then one section per subcommand."""
    from adactr.cli import _parser

    subs = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    summaries = {c.dest: c.help for c in subs[0]._choices_actions} if subs else {}
    out = ["# CLI reference", "",
           "Generated from the parser of `adactr` (`src/adactr/cli.py`) each time the site is built: this is",
           "exactly what `adactr COMMAND --help` prints.", "",
           "```text", _help_text(_parser()), "```", ""]
    for name, parser in cli_commands().items():
        out += [f"## adactr {name}", "", f"{summaries.get(name) or ''}".strip(), "",
                "```text", _help_text(parser), "```", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------
# config keys


@dataclass(frozen=True)
class ConfigKey:
    key: str  # dotted, as --set takes it: model.apg.rank
    type: str  # in words: "int", "list of int", "one of `adam`, `sgd`"
    default: str  # JSON, as --show-config prints it
    reason: str  # the comment beside the field in the source ("" when it has none)
    owner: type  # the dataclass that declares it


def _comments(cls: type) -> tuple[list[str], dict[int, str], list[ast.stmt]]:
    """The class's source lines, its comments by line number (1-based) and its body statements."""
    src = textwrap.dedent(inspect.getsource(cls))
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(src).readline) if tok.type == tokenize.COMMENT}
    (classdef,) = ast.parse(src).body
    return src.splitlines(), comments, classdef.body  # type: ignore[attr-defined]


def _beside(lines: list[str], comments: dict[int, str], node: ast.stmt) -> str:
    """The comment block right above ``node`` (no blank line between) and the comment(s) on its lines."""
    above: list[str] = []
    ln = node.lineno - 1
    while ln >= 1 and lines[ln - 1].strip().startswith("#"):
        above.insert(0, comments[ln])
        ln -= 1
    end = node.end_lineno or node.lineno
    trailing = [comments[i] for i in range(node.lineno, end + 1) if i in comments]
    return " — ".join(t for t in (" ".join(above), " ".join(trailing)) if t)


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` for a dataclass, read from its source."""
    lines, comments, body = _comments(cls)
    return {node.target.id: _beside(lines, comments, node) for node in body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}


def enum_comments(cls: type[Enum]) -> dict[str, str]:
    """``{value: comment}`` for the members of an Enum that have a comment beside them."""
    lines, comments, body = _comments(cls)
    out = {}
    for node in body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in cls.__members__ and (text := _beside(lines, comments, node)):
                out[str(cls[name].value)] = text
    return out


def _type_words(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_words(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_words(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "none"
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "one of " + ", ".join(f"`{m.value}`" for m in tp)
    return getattr(tp, "__name__", str(tp))


def _enums(tp: Any) -> list[type[Enum]]:
    if isinstance(tp, type) and issubclass(tp, Enum):
        return [tp]
    return [e for a in typing.get_args(tp) for e in _enums(a)]


def config_keys(cls: type | None = None, prefix: str = "") -> list[ConfigKey]:
    """Every leaf key of ``cls`` (default: ``RunConfig``), nested sections flattened to dotted keys."""
    from adactr.config import to_dict

    if cls is None:
        from adactr.train.config import RunConfig

        cls = RunConfig
    hints = typing.get_type_hints(cls)
    reasons = field_comments(cls)
    defaults = to_dict(cls())
    out: list[ConfigKey] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += config_keys(tp, prefix + f.name + ".")  # type: ignore[arg-type]
            continue
        reason = reasons.get(f.name, "")
        for enum in _enums(tp):
            notes = "; ".join(f"`{v}`: {c}" for v, c in enum_comments(enum).items())
            reason = f"{reason} ({notes})" if reason and notes else reason or notes
        out.append(ConfigKey(key=prefix + f.name, type=_type_words(tp), default=json.dumps(defaults[f.name]),
                             reason=reason, owner=cls))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def config_reference() -> str:
    """The config reference page (Markdown): one table per section (``model``, ``model.apg``, ``train``...)."""
    keys = config_keys()
    out = ["# Config reference", "",
           "Every key of a run's config, generated from the frozen dataclasses (`adactr.train.config.RunConfig`",
           "and the sections nested in it) each time the site is built. *Why* is the comment written beside",
           "the field in the source. Defaults live in the code; a config file (`--config run.yaml`) or",
           "`--set key=value` only overrides them, and an unknown key is an error. `adactr train --show-config`",
           "prints the resolved values.", "",
           "```bash",
           "adactr train --data prepared/x --model deepfm --out runs/x --set model.hidden=[64,32] --set train.lr=0.01",
           "```", ""]
    sections: dict[str, list[ConfigKey]] = {}
    for k in keys:
        sections.setdefault(k.key.rsplit(".", 1)[0], []).append(k)
    for section, items in sections.items():
        owner = items[0].owner
        doc = inspect.getdoc(owner) or ""
        out += [f"## {section}", "", f"`{owner.__module__}.{owner.__qualname__}`"
                + (f": {doc.splitlines()[0]}" if doc and not doc.startswith(owner.__name__ + "(") else ""), "",
                "| key | type | default | why |", "|---|---|---|---|"]
        out += [f"| `{k.key}` | {_cell(k.type)} | `{_cell(k.default)}` | {_cell(k.reason)} |" for k in items]
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------
# docstrings

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|obj|exc):`~?([^`]+)`")


def docstring_to_markdown(text: str) -> str:
    """Our docstrings' reST habits as Markdown: roles as code, ``>>>`` examples fenced, ``::`` as ``:``."""
    text = _ROLE.sub(r"`\1`", text)
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].strip())
                i += 1
            out += [indent + "```pycon", *(indent + b for b in block), indent + "```"]
            continue
        out.append(line[:-1] if line.endswith("::") and not line.endswith(" ::") else line)
        i += 1
    return "\n".join(out)
