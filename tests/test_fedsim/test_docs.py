"""Keep the docs true: every page is in the mkdocs nav, every relative link and anchor in README.md
and docs/pages/*.md resolves, and the commands in code blocks marked for testing run.

Marking a block: put ``<!-- test: run -->`` on the line before a fenced ``bash`` or ``console``
block. Every ``python -m fedsim ...`` (or ``fedsim ...``) line in it then runs in-process, in a
fresh temporary folder shared by the block's lines, and must exit 0 (``<!-- test: run exit=2 -->``
expects another status). ``run`` commands are made tiny: ``--rounds 2`` unless the line sets
rounds, no progress bar or TensorBoard, and ``--out runs/doc-N`` unless the line names one. In a
``console`` block, lines starting with ``$ `` are commands and the lines after one are output the
command must print (``...`` matches anything). Only mark commands that take seconds.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedsim.cli import main

REPO = Path(__file__).resolve().parents[2]
PAGES = REPO / "docs" / "pages"
MKDOCS = REPO / "docs" / "mkdocs.yml"
DOC_FILES = [REPO / "README.md", *sorted(PAGES.glob("*.md"))]

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
MARKED = re.compile(r"^<!-- test: run(?P<args>[^>]*?) -->\n```(?P<lang>\w*)\n(?P<body>.*?)^```[ \t]*$", re.S | re.M)


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


# --------------------------------------------------------------------------- nav


def _nav_entries(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [entry for item in node for entry in _nav_entries(item)]
    if isinstance(node, dict):
        return [entry for value in node.values() for entry in _nav_entries(value)]
    return []


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load(MKDOCS.read_text())
    assert config["docs_dir"] == "pages"
    entries = [entry for entry in _nav_entries(config["nav"]) if "://" not in entry]
    assert len(entries) == len(set(entries)), f"a page is listed twice in docs/mkdocs.yml's nav: {entries}"
    missing = [entry for entry in entries if not (PAGES / entry).is_file()]
    assert not missing, f"docs/mkdocs.yml's nav names pages that do not exist in docs/pages/: {missing}"
    pages = sorted(path.relative_to(PAGES).as_posix() for path in PAGES.rglob("*.md"))
    unlisted = [page for page in pages if page not in entries]
    assert not unlisted, f"pages missing from the nav in docs/mkdocs.yml (add them there): {unlisted}"


def test_the_site_builds_without_warnings(tmp_path):
    """What CI runs before the tests (.ci/run); skipped where the docs extra is not installed."""
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[docs]')")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(MKDOCS), "-d", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "index.html").is_file()


# --------------------------------------------------------------------------- links


def _slug(heading: str) -> str:
    """The anchor GitHub and mkdocs' toc extension give a heading (they agree on ASCII headings)."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(heading) for heading in HEADING.findall(FENCE.sub("", path.read_text()))}


def _links(path: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text()))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def test_the_docs_have_links_to_check():
    assert len(_links(REPO / "README.md")) >= 10 and (PAGES / "index.md").is_file()


@pytest.mark.parametrize("doc", DOC_FILES, ids=_rel)
def test_every_relative_link_points_to_an_existing_file_and_anchor(doc):
    broken = []
    for target in _links(doc):
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists() or REPO not in (path, *path.parents):
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target} (no heading with anchor #{anchor} in {_rel(path)})")
    assert not broken, f"{_rel(doc)} has broken links: {broken}"


# --------------------------------------------------------------------------- commands


def _marked_blocks() -> list:
    blocks = []
    for doc in DOC_FILES:
        text = doc.read_text()
        for match in MARKED.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append(
                pytest.param(match.group("args"), match.group("lang"), match.group("body"), id=f"{_rel(doc)}:{line}")
            )
    return blocks


def _commands(lang: str, body: str) -> list[tuple[str, list[str]]]:
    """(command line, expected output lines) of a marked block."""
    body = body.replace("\\\n", " ")
    commands: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if lang == "console":
            if line.startswith("$ "):
                commands.append((line[2:], []))
            elif line.strip():
                assert commands, f"output before the first '$ ' command: {line!r}"
                commands[-1][1].append(line)
        elif line.strip() and not line.lstrip().startswith("#"):
            commands.append((line, []))
    return commands


def _fedsim_args(command: str, number: int) -> list[str]:
    words = shlex.split(command, comments=True)
    if words[:3] == ["python", "-m", "fedsim"]:
        args = words[3:]
    elif words[:1] == ["fedsim"]:
        args = words[1:]
    else:
        raise AssertionError(f"a block marked <!-- test: run --> may only hold fedsim commands, not {command!r}")
    if args[:1] == ["run"] and "--dry-run" not in args:
        if "--rounds" not in args and "--resume" not in args and not any(a.startswith("rounds=") for a in args):
            args += ["--rounds", "2"]
        args += ["--quiet", "--no-tensorboard"]
        if "--out" not in args and "--resume" not in args:
            args += ["--out", f"runs/doc-{number}"]
    return args


def _matches(expected: str, output_lines: list[str]) -> bool:
    pattern = re.compile(re.escape(expected.strip()).replace(re.escape("..."), ".*"))
    return any(pattern.fullmatch(line.strip()) for line in output_lines)


def test_the_docs_have_marked_blocks():
    assert len(_marked_blocks()) >= 3


@pytest.mark.parametrize("args, lang, body", _marked_blocks())
def test_marked_commands_in_the_docs_run(args, lang, body, tmp_path, monkeypatch, capsys, one_torch_thread):
    settings = dict(item.split("=", 1) for item in args.split())
    expected_status = int(settings.get("exit", 0))
    monkeypatch.chdir(tmp_path)
    commands = _commands(lang, body)
    assert commands, "a marked block without commands"
    for number, (command, expected) in enumerate(commands):
        try:
            status = main(_fedsim_args(command, number))
        except SystemExit as exc:  # argparse's own errors
            status = exc.code
        out, err = capsys.readouterr()
        assert status == expected_status, f"{command!r} exited {status}, the docs say {expected_status}:\n{err[-2000:]}"
        lines = (out + err).splitlines()
        missing = [line for line in expected if not _matches(line, lines)]
        assert not missing, f"{command!r} did not print {missing}; it printed:\n{out + err}"
