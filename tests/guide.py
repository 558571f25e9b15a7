"""The command blocks of the guides (README.md, deploy/README.md): indented by four
spaces after a blank line, as the guides write them, each with the paragraph before it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_COMMENT = re.compile(r"\s#\s.*$")  # a command's trailing comment


@dataclass(frozen=True, slots=True)
class Block:
    path: Path
    lead: str  # the paragraph (or list item) just before the block
    text: str  # the block, unindented

    def commands(self) -> list[str]:
        """Its commands: one a line, comments and continuations joined, blank lines out."""
        found: list[str] = []
        pending = ""
        for raw in self.text.splitlines():
            line = "" if raw.lstrip().startswith("#") else _COMMENT.sub("", raw).rstrip()
            if not line.strip():
                continue
            if pending:
                line = pending + " " + line.strip()
                pending = ""
            if line.endswith("\\"):
                pending = line[:-1].rstrip()
                continue
            found.append(" ".join(line.split()))
        return found


def section(path: Path, heading: str | None) -> str:
    """The text under a "## " heading up to the next one (None: the whole file)."""
    text = path.read_text()
    if heading is None:
        return text
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def blocks(path: Path, heading: str | None = None) -> list[Block]:
    """Every command block of a Markdown file (indented four spaces or more after a blank
    line; the same indentation inside list items), with the paragraph before it; only
    those under `heading` when given."""
    lines = section(path, heading).splitlines()
    found: list[Block] = []
    paragraph: list[str] = []
    lead: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if (
            line.startswith("    ")
            and line.strip()
            and (index == 0 or not lines[index - 1].strip())
        ):
            code: list[str] = []
            while index < len(lines):
                current = lines[index]
                if current.strip() and not current.startswith("    "):
                    break
                if not current.strip():
                    following = lines[index + 1] if index + 1 < len(lines) else ""
                    if not (following.startswith("    ") and following.strip()):
                        break
                code.append(current)
                index += 1
            width = min(len(c) - len(c.lstrip(" ")) for c in code if c.strip())
            text = "\n".join(c[width:] for c in code)
            found.append(Block(path, " ".join(lead), text))
            continue
        if line.strip():
            paragraph.append(line.strip())
        elif paragraph:
            lead, paragraph = paragraph, []
        index += 1
    return found


def guide_block(path: Path, words: str) -> str:
    """The one block whose lead paragraph holds `words`."""
    (found,) = [b.text for b in blocks(path) if words in b.lead]
    return found


def inline_commands(path: Path, heading: str | None, programs: tuple[str, ...]) -> list[str]:
    """Commands quoted inline (`...`) in the text, outside the blocks: the spans that
    start with one of `programs`, split at "; "."""
    text = section(path, heading)
    prose = "\n".join(line for line in text.splitlines() if not line.startswith("    "))
    found = []
    for span in re.findall(r"`([^`]+)`", prose):
        for command in span.split("; "):
            if command.split(" ", 1)[0] in programs and " " in command:
                found.append(" ".join(command.split()))
    return found
