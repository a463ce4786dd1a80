"""The docs run: the quick start is executed, every command shown parses against the current code, the
generated references cover every subcommand and config key, and the site builds with --strict."""

import dataclasses
import doctest
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pytest

from adactr.cli import COMMANDS, _parser, main
from adactr.config import override, parse_sets, to_dict
from adactr.docs_gen import (
    cli_commands,
    cli_reference,
    config_keys,
    config_reference,
    docstring_to_markdown,
    enum_comments,
    field_comments,
)
from adactr.models.registry import MODELS
from adactr.train.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md"))
SHOWN = [ROOT / "README.md", *PAGES]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
SMALL = {  # appended to the quick start's commands so the test takes seconds (argparse: the last value wins)
    "demo": ["--rows", "6000", "--quiet", "--set", "model.hidden=[32,16]", "--set", "train.epochs=2",
             "--set", "train.batch_size=512"],
    "train": ["--quiet", "--set", "model.hidden=[32,16]", "--set", "train.epochs=2", "--set", "train.batch_size=512"],
    "prepare": ["--quiet"], "evaluate": ["--quiet"], "predict": ["--quiet"],
}


def shell_blocks(text: str) -> list[list[str]]:
    """The commands of each ```bash block: continuation lines joined, comments and blank lines dropped."""
    blocks = []
    for lang, body in FENCE.findall(text):
        if lang not in ("bash", "sh", "shell"):
            continue
        joined = re.sub(r"\\\n\s*", " ", body)
        cmds = [c for c in (" ".join(line.split(" #")[0].split()) for line in joined.splitlines())
                if c and not c.startswith("#")]
        blocks.append(cmds)
    return blocks


def argv_of(command: str) -> list[str]:
    """Tokens of a shown command, leading VAR=value assignments dropped and `[--optional ...]` unwrapped."""
    tokens = shlex.split(command)
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):
        tokens.pop(0)
    out = []
    for t in tokens:
        if t.startswith("[--"):
            t = t[1:]
        if t.endswith("]") and t.count("]") > t.count("["):
            t = t[:-1]
        out.append(t)
    return out


def _check_sets(sets: list[str], where: str) -> None:
    override(RunConfig(), parse_sets(sets))  # raises ConfigError naming the key or value


def test_shell_blocks_join_continuations_and_drop_comments():
    text = ("x\n```bash\n# a comment\nadactr train --data d \\\n    --out r   # trailing\n\nls\n```\n"
            "```python\nno\n```\n")
    assert shell_blocks(text) == [["adactr train --data d --out r", "ls"]]
    assert argv_of("ADACTR_CPU_LINEAR=aten python b.py --x 1 [--keep-freed-memory]") == [
        "python", "b.py", "--x", "1", "--keep-freed-memory"]
    assert argv_of("adactr train [--set model.hidden=[4,2]]") == ["adactr", "train", "--set", "model.hidden=[4,2]"]


def test_quick_start_runs(tmp_path, monkeypatch):
    page = (ROOT / "docs" / "quickstart.md").read_text()
    blocks = [b for b in shell_blocks(page) if b and all(c.startswith("adactr ") for c in b)]
    assert len(blocks) == 1, "the quick start has one block of adactr commands"
    (commands,) = blocks
    assert [argv_of(c)[1] for c in commands] == ["demo", "prepare", "train", "train", "evaluate", "predict", "plot"]
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = argv_of(command)[1:]
        assert main(argv + SMALL.get(argv[0], [])) == 0, command
    assert (tmp_path / "runs/deepfm-apg/metrics.json").exists()
    assert (tmp_path / "probabilities.csv").read_text().startswith("probability\n")
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_readme_quick_start_is_the_tested_one():
    tested = [c for b in shell_blocks((ROOT / "docs" / "quickstart.md").read_text()) for c in b]
    readme = [b for b in shell_blocks((ROOT / "README.md").read_text()) if b and b[0].startswith("adactr prepare")]
    assert len(readme) == 1 and len(readme[0]) >= 5
    assert set(readme[0]) <= set(tested), set(readme[0]) - set(tested)


@pytest.mark.parametrize("path", SHOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_shown_parses(path):
    """Each `adactr ...` line parses with the CLI's parser (its --set keys and --model exist); each
    `python benchmarks/x.py ...` line names a script that exists and takes every --flag shown."""
    checked = 0
    for command in (c for b in shell_blocks(path.read_text()) for c in b):
        argv = argv_of(command)
        if not argv:  # an assignment alone: D=../shared/data
            continue
        if argv[0] == "adactr":
            try:
                args = _parser().parse_args(argv[1:])
            except SystemExit as e:  # --help exits 0; a usage error exits 2
                assert e.code == 0, command
                continue
            _check_sets(getattr(args, "set", []), command)
            if getattr(args, "model", None):
                assert args.model in MODELS, command
            checked += 1
        elif argv[0] in ("python", "python3", "bash") and argv[1:2] and argv[1].startswith("benchmarks/"):
            script = ROOT / argv[1]
            assert script.exists(), command
            source = script.read_text()
            for flag in (t.split("=")[0] for t in argv[2:] if t.startswith("--")):
                assert f'"{flag}"' in source, f"{flag} not taken by {argv[1]}: {command}"
            for opt, value in zip(argv, argv[1:], strict=False):
                if opt in ("--set", "--apg-set"):
                    _check_sets([value], command)
                elif opt == "--model-set":
                    _check_sets([value.split(":", 1)[1]], command)
                elif opt == "--variant":
                    _check_sets(value.split("=", 1)[1].split(), command)
            checked += 1
    if str(path.relative_to(ROOT)) in ("README.md", "docs/quickstart.md", "docs/data.md", "docs/models.md",
                                       "docs/apg.md", "docs/speed.md"):
        assert checked, f"{path.name} shows no command"


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local
    for link in local:
        assert (ROOT / link).exists(), link


def test_cli_reference_covers_every_subcommand_and_option():
    commands = cli_commands()
    assert list(commands) == list(COMMANDS)
    page = cli_reference()
    for name, parser in commands.items():
        assert f"## adactr {name}\n" in page
        for action in parser._actions:
            for option in action.option_strings:
                assert option in page, (name, option)


def _leaf_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return out


def test_config_reference_covers_every_key_with_its_comment():
    keys = {k.key: k for k in config_keys()}
    assert list(keys) == _leaf_keys(to_dict(RunConfig()))  # what --show-config prints, in its order
    page = config_reference()
    for key in keys:
        assert f"| `{key}` |" in page
    assert keys["train.batch_size"].reason == "BARS setting for Frappe / Criteo"
    assert keys["train.batch_size"].default == "4096" and keys["train.batch_size"].type == "int"
    assert keys["model.apg.rank"].type == "int or list of int"
    assert keys["model.apg.rank"].reason.startswith("K: the efficiency study's setting (Section 4.4")
    assert "`sparse_adam`: embeddings only" in keys["train.optimizer"].reason  # the enum member's comment


class _Colour(str, Enum):
    RED = "red"  # warm
    BLUE = "blue"


@dataclass(frozen=True)
class _Example:
    # a block above
    # on two lines
    a: int = 1  # and one beside
    b: str = "x"

    c: float = 0.5  # beside only


def test_field_and_enum_comments_are_read_from_the_source():
    assert field_comments(_Example) == {"a": "a block above on two lines — and one beside", "b": "",
                                        "c": "beside only"}
    assert enum_comments(_Colour) == {"red": "warm"}
    assert [f.name for f in dataclasses.fields(_Example)] == ["a", "b", "c"]


def test_docstring_to_markdown():
    text = "See :class:`~adactr.nn.apg.APGLinear` and :meth:`collapse`::\n\n    y = U S V x\n\n>>> 1 + 1\n2\n\nEnd."
    assert docstring_to_markdown(text) == (
        "See `adactr.nn.apg.APGLinear` and `collapse`:\n\n    y = U S V x\n\n```pycon\n>>> 1 + 1\n2\n```\n\nEnd.")


@pytest.mark.parametrize("path", [p for p in SHOWN if ">>>" in p.read_text()],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_in_the_docs_run(path):
    result = doctest.testfile(str(path), module_relative=False, verbose=False)
    assert result.attempted and not result.failed


def test_site_builds_strict(tmp_path):
    """`mkdocs build --strict`: a broken link, a missing nav page or an unresolved API reference fails."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "adactr prepare" in (tmp_path / "site/reference/cli/index.html").read_text()
    assert "model.apg.rank" in (tmp_path / "site/reference/config/index.html").read_text()
    assert "APGLinear" in (tmp_path / "site/api/nn/index.html").read_text()
