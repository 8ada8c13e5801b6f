"""Documentation that names tests: every test it names exists."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent
_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?::(\w+)`")


def named_tests(text: str) -> list[tuple[str, str]]:
    """(file, test) for every ``tests/x.py::name``, and ``::name`` meaning the
    last file named before it."""
    found = []
    current = ""
    for match in _REFERENCE.finditer(text):
        current = match.group(1) or current
        assert current, f"`::{match.group(2)}` before any file is named"
        found.append((current, match.group(2)))
    return found


def missing_tests(doc: str, at_least: int) -> list[str]:
    """The tests ``doc`` names that do not exist (it names at least ``at_least``)."""
    named = named_tests((ROOT / doc).read_text())
    assert len(named) >= at_least
    return [
        f"{path}::{name}"
        for path, name in named
        if not re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), flags=re.MULTILINE)
    ]


def test_every_test_the_threat_model_names_exists() -> None:
    assert missing_tests("docs/security.md", at_least=60) == []


def test_every_test_the_reliability_page_names_exists() -> None:
    assert missing_tests("docs/reliability.md", at_least=15) == []
