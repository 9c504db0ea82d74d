"""README.md and README.ko.md stay one document in two languages, and their commands stay real.

Both files must have the same headings (level and order; the text differs), the same fenced code blocks
(identical once comments, which are translated, are dropped) and the same link and image targets; each links
the other in its first lines; every relative link names a file of the repository; every `noduleflow ...`
command in a code block parses against the typer app (command path, options and their values), and every
`noduleflow ...` in inline code names a real command. Each check is shown to fail on a mutated copy.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from pathlib import Path

import pytest
import typer

from noduleflow.cli import app

ROOT = Path(__file__).resolve().parents[2]
EN, KO = ROOT / "README.md", ROOT / "README.ko.md"
LANGUAGE_LINKS = {"README.md", "README.ko.md"}  # each file links the other: targets that differ by design


_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_INLINE = re.compile(r"`(noduleflow [^`]+)`")
_SHELL = {"", "sh", "bash", "console", "shell"}


def _split(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(prose lines, code blocks as (language, lines)); a fence may be indented (inside a list item)."""
    prose, blocks, block = [], [], None
    for line in text.splitlines():
        fence = _FENCE.match(line)
        if block is None and fence:
            block = (fence.group(2), [], len(fence.group(1)))
        elif block is not None and fence and not fence.group(2):
            blocks.append((block[0], block[1]))
            block = None
        elif block is not None:
            block[1].append(line[block[2] :] if line[: block[2]].isspace() else line.lstrip())
        else:
            prose.append(line)
    assert block is None, "a code fence is not closed"
    return prose, blocks


def headings(text: str) -> list[int]:
    """The level of each heading, in order (text outside code blocks only)."""
    prose, _ = _split(text)
    return [len(m.group(1)) for line in prose if (m := re.match(r"^(#{1,6})\s+\S", line))]


def _uncommented(line: str) -> str:
    """A code line without its comment (comments are translated; commands are not)."""
    if line.lstrip().startswith("#"):
        return ""
    return re.sub(r"\s+# .*$", "", line).rstrip()  # a comment is "  # words"; a '#' in a command is not


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code without comments or blank lines) of every fenced block, in order."""
    _, blocks = _split(text)
    return [(lang, "\n".join(c for line in lines if (c := _uncommented(line)))) for lang, lines in blocks]


def link_targets(text: str) -> Counter:
    """How often each link or image target occurs outside code blocks (the language links left out)."""
    prose, _ = _split(text)
    return Counter(t for line in prose for t in _LINK.findall(line) if t not in LANGUAGE_LINKS)


def drift(en: str, ko: str) -> list[str]:
    """Where the Korean README no longer matches the English one; empty when they agree."""
    problems = []
    if headings(en) != headings(ko):
        problems.append(f"headings differ: levels {headings(en)} against {headings(ko)}")
    en_code, ko_code = code_blocks(en), code_blocks(ko)
    if len(en_code) != len(ko_code):
        problems.append(f"{len(en_code)} code blocks against {len(ko_code)}")
    problems += [
        f"code block {i + 1} differs:\n{a[1]}\n---\n{b[1]}" for i, (a, b) in enumerate(zip(en_code, ko_code)) if a != b
    ]
    if link_targets(en) != link_targets(ko):
        problems.append(
            f"link targets differ: {sorted((link_targets(en) - link_targets(ko)).elements())} only in "
            f"English, {sorted((link_targets(ko) - link_targets(en)).elements())} only in Korean"
        )
    if "README.ko.md" not in "\n".join(en.splitlines()[:5]):
        problems.append("README.md does not link README.ko.md in its first lines")
    if "README.md" not in "\n".join(ko.splitlines()[:5]):
        problems.append("README.ko.md does not link README.md in its first lines")
    return problems


def missing_files(text: str) -> list[str]:
    """Relative link targets that name no file of the repository."""
    targets = [t.split("#")[0] for t in link_targets(text) if not re.match(r"^[a-z]+:|^#", t)]
    return [t for t in targets if t and not (ROOT / t).exists()]


def _commands(text: str) -> list[list[str]]:
    """argv (after `noduleflow`) of every command in a shell code block, `-m noduleflow` included."""
    found = []
    for lang, code in code_blocks(text):
        if lang not in _SHELL:
            continue
        for line in code.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            words = list(lexer)
            ends = [i for i, w in enumerate(words) if set(w) <= set("&|;()<>")] + [len(words)]
            for i, word in enumerate(words):
                if word == "noduleflow" and (i == 0 or words[i - 1] in ("-m", "$") or i - 1 in ends):
                    found.append(words[i + 1 : min(e for e in ends if e > i)])
    return found


def _walk(argv: list[str]):
    """(the command reached, its path, the arguments left) for argv."""
    command, path = typer.main.get_command(app), []
    while hasattr(command, "commands") and argv and argv[0] in command.commands:
        path.append(argv[0])
        command, argv = command.commands[argv[0]], argv[1:]
    return command, tuple(path), argv


def cli_problems(text: str) -> list[str]:
    """Every `noduleflow ...` that the app would refuse; empty when all parse."""
    problems = []
    for argv in _commands(text):
        command, path, args = _walk(argv)
        if hasattr(command, "commands"):  # stopped at a group: the next word is no command of it
            if args and not args[0].startswith("-"):
                problems.append(f"noduleflow {' '.join(argv)}: no command {' '.join((*path, args[0]))!r}")
            continue
        try:
            command.make_context(" ".join(("noduleflow", *path)), args)
        except Exception as err:  # the app's usage errors (typer's own click), whatever their class
            problems.append(f"noduleflow {' '.join(argv)}: {err}")
    for span in (m for line in _split(text)[0] for m in _INLINE.findall(line)):
        words = [w for w in span.split()[1:] if not w.startswith(("-", "["))]
        command, path, rest = _walk(words)
        if hasattr(command, "commands") and rest and not rest[0].isupper():
            problems.append(f"`{span}`: no command {' '.join((*path, rest[0]))!r}")
    return problems


@pytest.fixture(scope="module")
def readmes() -> tuple[str, str]:
    return EN.read_text(encoding="utf-8"), KO.read_text(encoding="utf-8")


def test_the_two_readmes_agree(readmes):
    en, ko = readmes
    assert drift(en, ko) == []
    assert len(headings(en)) >= 10 and len(code_blocks(en)) >= 10  # the checks saw the whole guide


def test_every_command_parses_and_every_link_resolves(readmes):
    en, ko = readmes
    assert len(_commands(en)) >= 20  # the commands were found, so an empty problem list means something
    assert cli_problems(en) == []
    assert missing_files(en) == [] and missing_files(ko) == []


def _mutate(text: str, old: str, new: str) -> str:
    assert old in text, f"the mutation's anchor {old!r} is gone from the README"
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    "which, old, new, expected",
    [
        ("ko", "\n## ", "\n### ", "headings differ"),  # a section demoted
        ("ko", "\n### ", "\n", "headings differ"),  # a heading dropped
        ("ko", "--scans 160", "--scans 16", "code block"),  # a command edited in one language
        ("ko", "```\nmake demo\nmake test\n```\n", "", "code blocks against"),  # a block dropped
        ("ko", "(docs/decisions.md)", "(docs/decision.md)", "link targets differ"),
        ("ko", "(README.md)", "(README.en.md)", "does not link README.md"),
        ("en", "(README.ko.md)", "(README.kr.md)", "does not link README.ko.md"),
    ],
)
def test_drift_is_caught(readmes, which, old, new, expected):
    en, ko = readmes
    en, ko = (_mutate(en, old, new), ko) if which == "en" else (en, _mutate(ko, old, new))
    problems = drift(en, ko)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "old, new, expected",
    [
        (
            "noduleflow prepare /data/luna16\n",
            "noduleflow prepare /data/luna16\nnoduleflow frobnicate x\n",
            "frobnicate",
        ),
        ("--runtime onnx", "--runtime onyx", "onyx"),  # a value the option refuses
        ("--scans 160 --preview", "--scans 160 --previews", "--previews"),  # no such option
        ("noduleflow evaluate data/held_out", "noduleflow evaluate", "Missing"),
        ("-m noduleflow train classify", "-m noduleflow train clasify", "clasify"),
        ("`noduleflow train detector`", "`noduleflow train detectors`", "detectors"),  # inline code
    ],
)
def test_a_wrong_command_is_caught(readmes, old, new, expected):
    problems = cli_problems(_mutate(readmes[0], old, new))
    assert any(expected in p for p in problems), problems


def test_a_broken_link_is_caught(readmes):
    assert missing_files(_mutate(readmes[0], "(docs/pipeline.svg)", "(docs/pipeline.png)")) == ["docs/pipeline.png"]
