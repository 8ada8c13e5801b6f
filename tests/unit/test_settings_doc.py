"""The README's configuration table is the settings' declarations: every
variable a role reads is declared, and the table says what the declarations say.

To rewrite the table after changing a declaration:
``SIGNALING_WRITE_DOCS=1 .venv/bin/pytest tests/unit/test_settings_doc.py``.
"""

import os
import re
from pathlib import Path

import pytest

from edge.settings import EdgeSettings
from room_actors.settings import ActorSettings
from runtime.settings import Settings, declared_names, settings_table
from webhooks.settings import WebhookSettings

README = Path(__file__).parents[2] / "README.md"
BEGIN = "<!-- settings table, made from the declarations: tests/unit/test_settings_doc.py -->\n"
END = "<!-- end of the settings table -->\n"
ROLES: list[tuple[str, type[Settings]]] = [
    ("edge", EdgeSettings),
    ("actors", ActorSettings),
    ("webhooks", WebhookSettings),
]
REQUIRED = {
    "JWT_SECRET": "x" * 40,
    "WEBHOOK_URL": "http://x/",
    "WEBHOOK_SECRET": "whsec_d2ViaG9vay1zZWNyZXQtZm9yLXRlc3RzLTAxMjM0NTY=",
}
_ROW = re.compile(r"^\| `(?P<name>[A-Z0-9_]+)` \| (?P<role>[^|]+) \| (?P<default>[^|]+) \|")


def documented(table: str) -> dict[tuple[str, str], str]:
    """(variable, role) -> the default a table shows."""
    rows = (_ROW.match(line) for line in table.splitlines())
    return {(m["name"], m["role"].strip()): m["default"].strip() for m in rows if m}


def disagreements(readme_table: str, declared_table: str) -> list[str]:
    """What the README says that the declarations do not, row by row."""
    readme, declared = documented(readme_table), documented(declared_table)
    problems = [f"{name} ({role}) is not in the README" for name, role in declared.keys() - readme]
    problems += [f"{name} ({role}) is not declared" for name, role in readme.keys() - declared]
    problems += [
        f"{key[0]} ({key[1]}): the README says {readme[key]}, the declaration {declared[key]}"
        for key in readme.keys() & declared.keys()
        if readme[key] != declared[key]
    ]
    return sorted(problems)


def readme_table() -> str:
    text = README.read_text()
    assert text.count(BEGIN) == 1, "the table's first marker is missing"
    assert text.count(END) == 1, "the table's last marker is missing"
    return text.split(BEGIN)[1].split(END)[0]


def test_the_readme_table_is_the_declarations() -> None:
    declared = settings_table(ROLES)
    if os.environ.get("SIGNALING_WRITE_DOCS") == "1":
        text = README.read_text()
        README.write_text(text.replace(readme_table(), declared))
    current = readme_table()
    assert disagreements(current, declared) == []
    assert current == declared, "rewrite it with SIGNALING_WRITE_DOCS=1 (see this file)"


def test_the_check_names_missing_undeclared_and_different_rows() -> None:
    declared = settings_table(ROLES)
    without_port = "\n".join(line for line in declared.splitlines() if "`EDGE_PORT`" not in line)
    extra = declared + "| `EDGE_COLOR` | edge | `blue` |  | a variable nobody reads |\n"
    changed = declared.replace("`TOKEN_TTL` | edge | `86400`", "`TOKEN_TTL` | edge | `3600`")
    assert disagreements(without_port, declared) == ["EDGE_PORT (edge) is not in the README"]
    assert disagreements(extra, declared) == ["EDGE_COLOR (edge) is not declared"]
    assert disagreements(changed, declared) == [
        "TOKEN_TTL (edge): the README says `3600`, the declaration `86400`"
    ]


@pytest.mark.parametrize(("role", "settings"), ROLES)
def test_every_variable_a_role_reads_is_declared(role: str, settings: type[Settings]) -> None:
    read: set[str] = set()
    settings.from_env(REQUIRED, record=read)
    assert read == declared_names(settings), role
    assert {name for name in read if name.startswith("METRICS_")} == (
        set() if role == "edge" else {"METRICS_HOST", "METRICS_PORT"}
    )


def test_every_secret_may_come_from_a_file_and_the_readme_says_so() -> None:
    files = {name for _, cls in ROLES for name in declared_names(cls) if name.endswith("_FILE")}
    assert files == {
        "JWT_SECRET_FILE",
        "JWT_SECRET_PREVIOUS_FILE",
        "CLOUDFLARE_APP_SECRET_FILE",
        "CLOUDFLARE_TURN_KEY_API_TOKEN_FILE",
        "NATS_PASSWORD_FILE",
        "ADMIN_API_KEY_FILE",
        "WEBHOOK_SECRET_FILE",
    }
    for name in files:
        assert f"`{name}`" in readme_table()
