"""mkdocs hook: publish the repository files that pages link to outside docs/pages/.

Pages link to result figures where they live, e.g. ``../../experiments/results/x.png``, so the
links work on GitHub too. mkdocs only knows files inside ``docs_dir``; this hook adds each such
existing target as a static file of the site (under ``repo/``), so the built site shows it and
``--strict`` still fails on a link to a file that does not exist.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

# a markdown link or image target: ](target) or ](target "title")
LINK = re.compile(r"\]\(([^)\s#]+)")


def on_files(files: Files, config) -> Files:
    docs_dir = Path(config["docs_dir"]).resolve()
    repo = docs_dir.parent.parent
    for page in list(files.documentation_pages()):
        for target in LINK.findall(Path(page.abs_src_path).read_text(encoding="utf-8")):
            if "://" in target:
                continue
            src_uri = posixpath.normpath(posixpath.join(posixpath.dirname(page.src_uri), target))
            if not src_uri.startswith("../") or files.get_file_from_path(src_uri) is not None:
                continue
            path = (docs_dir / src_uri).resolve()
            if not path.is_file() or repo not in path.parents:
                continue  # left to mkdocs, which reports it
            dest = "repo/" + path.relative_to(repo).as_posix()
            files.append(
                File(
                    src_uri,
                    str(docs_dir),
                    config["site_dir"],
                    config["use_directory_urls"],
                    dest_uri=dest,
                    inclusion=InclusionLevel.INCLUDED,
                )
            )
    return files
