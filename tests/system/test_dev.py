"""``signaling dev`` (what ``make run`` starts): the whole system in one command."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.harness import free_port

EXAMPLE = Path(__file__).parents[2] / "examples" / "old_client_call.py"


def test_dev_runs_a_call_with_fake_calls_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port, nats_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "JWT_SECRET"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")  # its nats CLI context goes there
    process = subprocess.Popen(
        [
            sys.executable, "-m", "signaling", "dev",
            "--port", str(port), "--nats-port", str(nats_port), "--data-dir", str(tmp_path),
            "--fake-calls",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # each line as it comes; the test's timeout bounds it
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        else:
            raise AssertionError("signaling dev exited:\n" + "".join(lines))
        output = "".join(lines)
        assert "JWT_SECRET is not set" in output
        assert f"http://127.0.0.1:{port}" in output
        assert (tmp_path / "dev-jwt-secret").stat().st_mode & 0o077 == 0
        assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200
        call = subprocess.run(
            [sys.executable, str(EXAMPLE), "--url", f"http://127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert call.returncode == 0, call.stdout + call.stderr
        # --fake-calls: the Calls proxy works against the local stand-in.
        base = f"http://127.0.0.1:{port}"
        room = httpx.post(f"{base}/api/rooms", json={"name": "dev"}, timeout=5).json()
        joined = httpx.post(f"{base}/api/rooms/{room['room_id']}/join", timeout=5).json()
        assert any("username" in server for server in joined["ice_servers"])
        created = httpx.post(
            f"{base}/cloudflare/session",
            headers={"Authorization": f"Bearer {joined['token']}"},
            timeout=5,
        )
        assert created.status_code == 201
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        with_port = subprocess.run(["ss", "-ltn"], capture_output=True, text=True, check=False)
        assert f":{port} " not in with_port.stdout
        assert f":{nats_port} " not in with_port.stdout
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_webhook_secret_prints_a_secret_the_official_library_takes() -> None:
    """``signaling webhook-secret``: a fresh ``whsec_`` secret each time, that
    the dispatcher accepts and the official Standard Webhooks library too."""
    from standardwebhooks.webhooks import Webhook

    from webhooks import signing
    from webhooks.settings import WebhookSettings

    made = [
        subprocess.run(
            [sys.executable, "-m", "signaling", "webhook-secret"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()
        for _ in range(2)
    ]  # fmt: skip
    assert made[0] != made[1]
    for secret in made:
        settings = WebhookSettings.from_env(
            {"WEBHOOK_URL": "https://x/h", "WEBHOOK_SECRET": secret}
        )
        body = b'{"id":"r.1"}'
        headers = signing.headers(signing.keys(settings.secret), "r.1", body)
        assert Webhook(secret).verify(body, headers) == {"id": "r.1"}
