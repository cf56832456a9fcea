"""mkdocs hook: serves the pages generated from the code (configuration table, CLI reference).

Registered in mkdocs.yml (``hooks:``). The generators live in ``twinstream/cli/docs.py`` and run on
every build, so the site cannot fall behind the settings declarations or the argument parsers: a
kept copy of a page in docs/reference/ (there for readers of the repository) is replaced by what
the code says now. ``tests/unit/test_docs_site.py`` keeps the copies in step.
"""

from __future__ import annotations

from mkdocs.structure.files import File, Files

from twinstream.cli.docs import GENERATED


def on_files(files: Files, config) -> Files:
    for src_uri, render in GENERATED.items():
        kept = files.get_file_from_path(src_uri)
        if kept is not None:
            files.remove(kept)
        files.append(File.generated(config, src_uri, content=render()))
    return files
