"""A real Prometheus server for tests: generated config, loopback port, HTTP API helpers."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli.procs import free_port

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "observability" / "alerts.yml"

#: Scrape job name per service: the convention alerts.yml and the dashboard rely on.
JOBS = {"gateway": "search-gateway", "retrieval": "search-retrieval", "reranker": "search-reranker"}


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("prometheus binary not installed (Debian/Ubuntu: apt-get install prometheus; .ci/run does this)")
    return path


def scrape_config(targets: Mapping[str, Sequence[str]], rule_files: Sequence[Path] = (), interval: str = "1s") -> dict:
    """A Prometheus config scraping ``targets`` (job name -> host:port list) every ``interval``."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(addresses)}]} for job, addresses in targets.items()
        ],
    }


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant-query ``expr``; a vector as a list of {"metric": labels, "value": [ts, "v"]}."""
        return self.api("query", query=expr)["result"]

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Poll ``check`` until it returns something truthy; fail with the Prometheus log otherwise."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            if self.proc.poll() is not None:
                break
            time.sleep(0.25)
        pytest.fail(f"timed out waiting for {what}; last={last!r}\n--- prometheus log ---\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_prometheus(
    tmp: Path, targets: Mapping[str, Sequence[str]], rule_files: Sequence[Path] = (ALERTS,), timeout: float = 30.0
) -> Prometheus:
    """Start Prometheus on a free loopback port scraping ``targets``; returns once it is ready."""
    binary = prometheus_binary()
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(targets, rule_files)))
    port = free_port()
    log = tmp / "prometheus.log"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as response:
                if response.status == 200:
                    return prom
        except OSError:
            pass
        time.sleep(0.2)
    prom.stop()
    pytest.fail(f"prometheus not ready after {timeout} s:\n{log.read_text()[-3000:]}")


DASHBOARD = REPO / "observability" / "grafana" / "search-dashboard.json"


def dashboard_panels(dashboard: dict) -> list[dict]:
    """Every non-row panel, including panels nested in collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL expr) for every query of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard_panels(dashboard) for t in p.get("targets", [])]


def as_plain_promql(expr: str) -> str:
    """Replace Grafana's interval variables so Prometheus itself can run the query."""
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "1h")
