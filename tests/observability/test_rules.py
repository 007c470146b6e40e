"""The alert rules: promtool accepts them, their unit tests pass, and every alert is tested both ways."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OBS = REPO / "observability"
ALERTS = OBS / "alerts.yml"
ALERT_TESTS = OBS / "alerts_test.yml"

pytestmark = pytest.mark.e2e


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian/Ubuntu: apt-get install prometheus; .ci/run does this)")
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=OBS)


def alert_names() -> set[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_promtool_check_rules():
    out = run("check", "rules", ALERTS.name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_check_config_of_the_local_prometheus_yml():
    out = run("check", "config", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_test_rules():
    out = run("test", "rules", ALERT_TESTS.name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_test_rules_can_fail(tmp_path):
    """A rule file with a loosened threshold must fail the same tests (the tests are not vacuous)."""
    promtool()
    broken = ALERTS.read_text().replace("2048 > 0.8", "2048 > 0.95")
    assert broken != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(ALERT_TESTS, tmp_path / "alerts_test.yml")
    out = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode != 0
    assert "SearchRerankerQueueSaturated" in out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_silent_case():
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fires, silent = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = alert_names()
    assert names, "no alerts found"
    assert names - fires == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested staying silent"
    assert (fires | silent) - names == set(), "tests for alerts that do not exist"


def test_every_alert_has_severity_summary_description_and_runbook():
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
            for key in ("summary", "description", "runbook"):
                assert rule["annotations"].get(key), (rule["alert"], key)
