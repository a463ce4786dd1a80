"""MkDocs hooks (mkdocs.yml `hooks:`) and a griffe extension (mkdocstrings `extensions:`).

The CLI and config reference pages are generated from the code at build time (adactr.docs_gen), so they
cannot drift from it; the docstrings' reST habits are turned into Markdown for the API reference.
"""

from __future__ import annotations

import griffe
from mkdocs.structure.files import File

from adactr.docs_gen import cli_reference, config_reference, docstring_to_markdown

GENERATED = {"reference/cli.md": cli_reference, "reference/config.md": config_reference}


def on_files(files, config):
    for uri, render in GENERATED.items():
        files.append(File.generated(config, uri, content=render()))
    return files


class RestToMarkdown(griffe.Extension):
    """Each docstring through adactr.docs_gen.docstring_to_markdown before mkdocstrings renders it; the
    submodules and attributes set in ``__init__`` without a docstring (``self.fc = ...``) left out, since
    their code is not documentation (dataclass fields stay: they are the constructor's arguments)."""

    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = docstring_to_markdown(obj.docstring.value)

    def on_class_members(self, *, cls, **kwargs) -> None:
        for name, member in list(cls.members.items()):
            if member.is_attribute and set(member.labels) == {"instance-attribute"} and not member.docstring:
                cls.del_member(name)
