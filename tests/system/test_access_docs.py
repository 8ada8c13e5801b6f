"""docs/access.md's examples, run as written against a real system: the Python
(PyJWT) and Node (``node:crypto`` only) minting scripts and the shell block
(the room service API with curl, then ``signaling token``). Their tokens must
get into a ``token`` room over /ws and carry their identity and grants; every
endpoint and request body the page names must be one the edge's OpenAPI schema
declares.

The examples are the fenced blocks marked ``<!-- example: NAME -->`` in the
page; a test fails if its block is missing, so the page cannot drift from what
runs here.
"""

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets

from bus_schema.closecodes import CloseCode
from edge.auth import TokenService
from tests.harness import JWT_SECRET, Api, System, WsClient

pytestmark = pytest.mark.asyncio(loop_scope="session")

DOC = Path(__file__).resolve().parents[2] / "docs" / "access.md"
RUN_TIMEOUT = 60.0
"""Seconds one example may take (an interpreter start on a loaded machine)."""

_EXAMPLE = re.compile(
    r"^<!-- example: (?P<name>[\w.-]+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)\n```$",
    re.DOTALL | re.MULTILINE,
)

Mint = Callable[..., Awaitable[str]]
"""``mint(room_id, identity, *flags)``: a token from one of the page's examples."""


def example(name: str) -> str:
    """The code of the block marked ``<!-- example: name -->``."""
    found = {m["name"]: m["code"] for m in _EXAMPLE.finditer(DOC.read_text())}
    assert name in found, f"docs/access.md has no block marked <!-- example: {name} -->"
    return found[name]


async def run(args: list[str], cwd: Path, **env: str) -> str:
    """Run one example the way the page says, with the test system's
    ``JWT_SECRET``; its standard output."""
    result = await asyncio.to_thread(
        subprocess.run,
        args,
        cwd=cwd,
        env={**os.environ, "JWT_SECRET": JWT_SECRET, **env},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"{args[0]} exited {result.returncode}:\n{result.stderr}"
    return result.stdout


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TokenService(JWT_SECRET, ttl=600).issue_admin()}"}


async def room_as_operator_sees_it(api: Api, room_id: str) -> dict[str, Any]:
    response = await api.http.get(f"/api/admin/rooms/{room_id}", headers=admin_headers())
    assert response.status_code == 200, response.text
    room: dict[str, Any] = response.json()
    return room


async def refused_status(url: str) -> int:
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url, open_timeout=10)
    return refused.value.response.status_code


async def check_minted_tokens(system: System, api: Api, mint: Mint) -> None:
    """What the page promises of a minted token, in a ``token`` room (which its
    join endpoint refuses): it enters, speaks as its identity, and its grants
    hold (``can_send=false``: relays refused with ``grant_denied``, the socket
    still usable and still publishing); an unknown grant makes it invalid."""
    ws_url = system.edges[0].ws_url
    room_id = await api.create_room("docs example", join_policy="token")
    refused = await api.http.post(f"/api/rooms/{room_id}/join", json={})
    assert (refused.status_code, refused.json()["code"]) == (403, "invite_only")

    viewer = await mint(room_id, "user-42", "can_send=false")
    claims = jwt.decode(viewer, JWT_SECRET, algorithms=["HS256"])
    assert claims["room_id"] == room_id
    assert (claims["identity"], claims["grants"]) == ("user-42", {"can_send": False})
    assert isinstance(claims["iat"], int)
    assert isinstance(claims["exp"], int)

    bob = await WsClient.connect(ws_url, await mint(room_id, "user-43"))
    bob_id = (await bob.recv_type("welcome"))["participant_id"]
    ann = await WsClient.connect(ws_url, viewer)
    welcome = await ann.recv_type("welcome")
    ann_id = claims["participant_id"]
    assert welcome["participant_id"] == ann_id
    assert {p["id"] for p in welcome["participants"]} == {ann_id, bob_id}
    joined = await bob.recv_type("join")
    assert joined["data"] == {"participant_id": ann_id, "participant_name": "user-42"}

    await ann.send({"type": "chat", "text": "to everyone"})
    assert (await ann.recv_type("error"))["code"] == "grant_denied"
    await ann.send({"type": "offer", "to": bob_id, "sdp": "v=0"})
    assert (await ann.recv_type("error"))["code"] == "grant_denied"
    # The refused frames went nowhere: the next thing Bob gets is Ann's mute,
    # which her token allows, on the socket that is still hers.
    await ann.send({"type": "track-state", "kind": "audio", "enabled": False})
    muted = await bob.recv_type("track-state")
    assert (muted["from"], muted["enabled"]) == (ann_id, False)
    await bob.send({"type": "chat", "text": "hello Ann"})
    assert (await ann.recv_type("chat"))["from"] == bob_id

    room = await room_as_operator_sees_it(api, room_id)
    seen = {p["id"]: (p["identity"], p["grants"]) for p in room["participants"]}
    assert seen == {ann_id: ("user-42", {"can_send": False}), bob_id: ("user-43", {})}

    unknown_grant = await mint(room_id, "user-44", "can_fly=true")
    assert await refused_status(f"{ws_url}?token={unknown_grant}") == 401


async def test_the_python_example_mints_tokens_that_enter_with_their_grants(
    system: System, api: Api, tmp_path: Path
) -> None:
    script = tmp_path / "mint.py"
    script.write_text(example("mint.py"))

    async def mint(room_id: str, identity: str, *flags: str) -> str:
        out = await run([sys.executable, str(script), room_id, identity, *flags], tmp_path)
        return out.strip()

    await check_minted_tokens(system, api, mint)


async def test_the_javascript_example_mints_tokens_that_enter_with_their_grants(
    system: System, api: Api, tmp_path: Path
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: docs/access.md's JavaScript example was not run")
    # .cjs: CommonJS, as the page says, whatever package.json may lie above tmp_path.
    script = tmp_path / "mint.cjs"
    script.write_text(example("mint.js"))

    async def mint(room_id: str, identity: str, *flags: str) -> str:
        return (await run([node, str(script), room_id, identity, *flags], tmp_path)).strip()

    await check_minted_tokens(system, api, mint)


async def test_the_shell_example_mints_with_the_api_and_the_cli(
    system: System, api: Api, tmp_path: Path
) -> None:
    """The curl call and ``signaling token`` give the same kind of token; both
    carry ``identity`` ``user-42``, so the second one to connect takes the
    first one's place (close 4000), as the page says of identities."""
    if shutil.which("curl") is None or shutil.which("bash") is None:
        pytest.skip("curl or bash is not installed: docs/access.md's shell example was not run")
    ws_url = system.edges[0].ws_url
    room_id = await api.create_room("docs shell example", join_policy="token")
    bin_dir = str(Path(sys.executable).parent)  # .venv/bin: `signaling`
    out = await run(
        ["bash", "-e", "-c", example("mint.sh")],
        tmp_path,
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        EDGE=system.edges[0].url,
        ROOM=room_id,
    )
    # curl prints the JSON answer without a newline, then the CLI its token.
    minted, end = json.JSONDecoder().raw_decode(out)
    assert set(minted) == {"token", "participant_id", "expires_at"}, minted
    from_cli = out[end:].strip()
    by_api = jwt.decode(minted["token"], JWT_SECRET, algorithms=["HS256"])
    by_cli = jwt.decode(from_cli, JWT_SECRET, algorithms=["HS256"])
    assert by_api["participant_id"] == minted["participant_id"]
    for claims in (by_api, by_cli):
        assert claims["room_id"] == room_id
        assert (claims["identity"], claims["participant_name"]) == ("user-42", "Ann")
        assert claims["grants"] == {"can_send": False}
        assert claims["exp"] - claims["iat"] == 3600

    first = await WsClient.connect(ws_url, minted["token"])
    await first.recv_type("welcome")
    await first.send({"type": "chat"})
    assert (await first.recv_type("error"))["code"] == "grant_denied"
    second = await WsClient.connect(ws_url, from_cli)
    assert (await second.recv_type("welcome"))["participant_id"] == by_cli["participant_id"]
    code, _ = await first.closed()
    assert code == CloseCode.REPLACED == 4000


# --- the page against the OpenAPI schema --------------------------------------------

_ENDPOINT = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/api/[^`\s?]*)(?:\?(\w+)=[^`]*)?`")
_CURL = re.compile(r"^curl .*?(?<!\\)$", re.DOTALL | re.MULTILINE)


def _operations(schema: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(METHOD, path regex) -> operation, for every operation of the schema."""
    found = {}
    for path, item in schema["paths"].items():
        pattern = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path)) + "$"
        for method, operation in item.items():
            found[(method.upper(), pattern)] = operation
    return found


def _operation(schema: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    path = re.sub(r"\{\w+\}", "x", path)
    matches = [
        op
        for (m, pattern), op in _operations(schema).items()
        if m == method and re.match(pattern, path)
    ]
    assert matches, f"docs/access.md names {method} {path}, which the edge does not serve"
    return matches[0]


def _properties(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """The properties an object schema allows, through ``$ref``/``allOf``/``oneOf``."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _properties(document["components"]["schemas"][name], document)
    properties: dict[str, Any] = dict(schema.get("properties", {}))
    for key in ("allOf", "oneOf", "anyOf"):
        for part in schema.get(key, []):
            properties.update(_properties(part, document))
    return properties


def _check_body(body: dict[str, Any], schema: dict[str, Any], document: dict[str, Any]) -> None:
    allowed = _properties(schema, document)
    assert set(body) <= set(allowed), (sorted(body), sorted(allowed))
    for key, value in body.items():
        if isinstance(value, dict):
            _check_body(value, allowed[key], document)


async def test_every_endpoint_and_body_the_page_names_is_in_the_schema(api: Api) -> None:
    """Each `METHOD /api/...` the page names is served (with the query
    parameter it shows), and each curl body uses only declared fields, nested
    ``grants`` included."""
    document = (await api.http.get("/schema/openapi.json")).json()
    text = DOC.read_text()
    named = _ENDPOINT.findall(text)
    assert len(named) >= 10, named
    for method, path, query in named:
        operation = _operation(document, method, path)
        if query:
            parameters = {p["name"] for p in operation.get("parameters", [])}
            assert query in parameters, (method, path, query)
    bodies = 0
    for command in _CURL.findall(text):
        flat = command.replace("\\\n", " ")
        body = re.search(r"-d '([^']*)'", flat)
        if body is None:
            continue
        method = re.search(r"-X (\w+)", flat)
        url = re.search(r"\$EDGE(/[^\"'\s]*)", flat)
        assert method is not None, flat
        assert url is not None, flat
        operation = _operation(document, method[1], url[1].replace("$ROOM", "x"))
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        _check_body(json.loads(body[1]), schema, document)
        bodies += 1
    assert bodies >= 3
