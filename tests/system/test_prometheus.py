"""deploy/prometheus and deploy/grafana, checked with the real tools: Debian's
``prometheus`` package's ``promtool`` (installed by ``scripts/install-prometheus``;
without it these tests skip, saying so). The configuration and the rules are
valid, each alert fires and stays quiet as its unit tests say, every dashboard
query parses, and every series a rule or a panel reads is one the roles export
(or a rule records): a typo cannot hide a panel or silence an alert."""

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from edge import metrics as edge_metrics
from room_actors import metrics as actor_metrics
from tests.harness import JWT_SECRET, Api, enter, free_port
from tests.system.test_nats_cli import read_output, start_dev
from tests.system.test_webhooks import SECRET, Receiver
from tests.waiting import eventually
from webhooks import metrics as webhook_metrics

ROOT = Path(__file__).parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "signaling.json"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed: run scripts/install-prometheus (Debian's prometheus)",
)


def promtool(*args: str | Path) -> str:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def panel_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def exported() -> set[str]:
    """The series names the three roles export (a histogram's three each)."""
    names = set()
    for module in (edge_metrics, actor_metrics, webhook_metrics):
        for value in vars(module).values():
            if not isinstance(value, MetricWrapperBase):
                continue
            for family in value.describe():
                names.add(family.name)
                if family.type == "counter":
                    names.add(family.name + "_total")
                if family.type == "histogram":
                    names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


def test_the_configuration_and_the_rules_are_valid() -> None:
    assert "SUCCESS" in promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert "SUCCESS" in promtool("check", "rules", PROMETHEUS / "rules.yml")


def test_every_alert_fires_and_stays_quiet_as_its_unit_tests_say() -> None:
    assert "SUCCESS" in promtool("test", "rules", PROMETHEUS / "rules.test.yml")
    tests = yaml.safe_load((PROMETHEUS / "rules.test.yml").read_text())["tests"]
    tested = {t["alertname"] for test in tests for t in test.get("alert_rule_test", [])}
    firing = {
        t["alertname"]
        for test in tests
        for t in test.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts == tested == firing, (alerts, tested, firing)
    assert len(alerts) >= 9


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = panel_queries()
    assert len(queries) >= 20
    # promtool parses PromQL in rules: each query as a recording rule.
    check = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(check))
    assert f"SUCCESS: {len(queries)} rules found" in promtool("check", "rules", path)


def test_every_series_read_is_exported_or_recorded() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    names = exported()
    assert "signaling_edge_nats_connected" in names
    expressions = [rule["expr"] for rule in rules()] + panel_queries()
    for expression in expressions:
        for name in re.findall(r"\bsignaling[_:][a-z0-9_:]+", expression):
            assert name in names or name in recorded, f"{name} in {expression}"
    # And every recorded series is shown or alerted on.
    shown = " ".join(expressions)
    for name in recorded:
        assert shown.count(name) >= 1, name


PROMETHEUS_SERVER = shutil.which("prometheus")


@pytest.mark.asyncio(loop_scope="function")
@pytest.mark.timeout(180)
@pytest.mark.skipif(
    PROMETHEUS_SERVER is None,
    reason="the prometheus server is not installed: run scripts/install-prometheus",
)
async def test_a_real_prometheus_scraping_signaling_dev_has_data_for_every_query(
    tmp_path: Path,
) -> None:
    """A Prometheus server scrapes ``signaling dev`` (an edge, a worker, a
    webhook dispatcher) under a little traffic, with our rules: every rule is
    healthy, every recorded series and every dashboard query returns data,
    and every series an alert reads exists."""
    assert PROMETHEUS_SERVER is not None
    receiver = await Receiver(fail_status=400).start()  # the first events: dead letters
    port, nats_port = free_port(), free_port()
    env = {
        **os.environ,
        "JWT_SECRET": JWT_SECRET,
        "WEBHOOK_URL": receiver.url,
        "WEBHOOK_SECRET": SECRET,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    dev = start_dev(env, port, nats_port, tmp_path / "data")
    server: subprocess.Popen[bytes] | None = None
    members = []
    try:
        lines: list[str] = []
        ready = threading.Event()
        threading.Thread(target=read_output, args=(dev, lines, ready), daemon=True).start()
        assert await asyncio.to_thread(ready.wait, 60), "signaling dev:\n" + "".join(lines)
        targets = {"signaling-edge": [f"127.0.0.1:{port}"]}
        for line in lines:
            found = re.search(r"(room_actors|webhooks)\.\w+: metrics on http://([\d.:]+)/", line)
            if found:
                job = "signaling-actors" if found[1] == "room_actors" else "signaling-webhooks"
                targets.setdefault(job, []).append(found[2])
        assert set(targets) == {"signaling-edge", "signaling-actors", "signaling-webhooks"}, lines

        web = free_port()
        server = start_prometheus(tmp_path, targets, web)
        api = f"http://127.0.0.1:{web}/api/v1"

        # A little traffic: a call with chats, mutes, an error, a Calls session.
        http = Api(f"http://127.0.0.1:{port}")
        room_id = await http.create_room("watched")
        ws_url = f"ws://127.0.0.1:{port}/ws"
        members = [await enter(http, ws_url, room_id, name) for name in ("Ann", "Ben")]
        await receiver.until(lambda: bool(receiver.attempts))
        receiver.fail_status = 0  # the later ones are accepted
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            created = await client.post(
                "/cloudflare/session", headers={"Authorization": f"Bearer {members[0].token}"}
            )
            assert created.status_code == 201, created.text
        for n in range(5):
            await members[0].send({"type": "chat", "text": f"n{n}"})
            await members[1].send({"type": "track-state", "kind": "audio", "enabled": n % 2 == 0})
        await members[0].send("not json")  # answered with an error frame
        await receiver.until(lambda: bool(receiver.accepted()))
        await http.close()

        async with httpx.AsyncClient(timeout=10) as client:

            async def query(expr: str) -> list[Any]:
                answer = (await client.get(f"{api}/query", params={"query": expr})).json()
                assert answer["status"] == "success", (expr, answer)
                result: list[Any] = answer["data"]["result"]
                return result

            async def rules_healthy() -> list[Any] | None:
                answer = (await client.get(f"{api}/rules")).json()
                every = [r for g in answer["data"]["groups"] for r in g["rules"]]
                done = all(r.get("lastEvaluation", "").startswith("2") for r in every)
                return every if every and done else None

            async def has_data(expr: str) -> bool:
                return bool(await query(expr))

            every = await eventually(rules_healthy, timeout=60, interval=0.5)
            assert len(every) == len(rules())
            for rule in every:
                assert rule["health"] == "ok", rule
            # Every panel and recorded series has data once a few scrapes are in
            # (rates need two samples, a dead letter's counter its first one).
            for expr in [*panel_queries(), *(r["record"] for r in rules() if "record" in r)]:
                await eventually(lambda e=expr: has_data(e), timeout=60, interval=0.5, message=expr)
            for rule in rules():
                if "alert" in rule:
                    await query(rule["expr"])  # evaluates (firing or not)
                    for name in re.findall(r"\bsignaling_[a-z0-9_]+", rule["expr"]):
                        assert await query(f"count({name})"), (rule["alert"], name)
    finally:
        for member in members:
            await member.client.close()
        if server is not None:
            server.terminate()
            await asyncio.to_thread(server.wait, 15)
        dev.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(dev.wait, 30)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
        await receiver.stop()


def start_prometheus(root: Path, targets: dict[str, list[str]], port: int) -> Any:
    """A Prometheus server on loopback scraping ``targets`` every second, with
    our rules (evaluated every second)."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS / "rules.yml")],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": hosts}]}
            for job, hosts in targets.items()
        ],
    }
    path = root / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    assert PROMETHEUS_SERVER is not None
    with (root / "prometheus.log").open("wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [
                PROMETHEUS_SERVER, f"--config.file={path}", f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def test_compose_runs_prometheus_and_grafana_on_these_files() -> None:
    """compose.yaml's `monitoring` profile mounts what this file checks, and
    Grafana reaches that Prometheus and loads that dashboard."""
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert prometheus["profiles"] == grafana["profiles"] == ["monitoring"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./deploy/grafana/signaling.json"].startswith("/var/lib/grafana/dashboards/")
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "signaling.yml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    # The scrape targets are compose's services, at the ports their roles serve on.
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host, port = target.split(":")
            assert host in services, target
            assert port in {"8787", "9102", "9103"}, target
