from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from services.common import config as cfg
from services.gateway.config import GatewayConfig
from services.reranker.config import RerankerConfig
from services.retrieval.config import RetrievalConfig


@dataclass(frozen=True)
class Sample:
    port: int = cfg.setting(50051, "SAMPLE_PORT", "port")
    ratio: float = cfg.setting(0.5, "SAMPLE_RATIO", "ratio")
    enabled: bool = cfg.setting(False, "SAMPLE_ENABLED", "flag")
    url: str | None = cfg.setting(None, "SAMPLE_URL", "optional url")


def parse(argv):
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser, Sample)
    return parser.parse_args(argv)


def test_defaults_env_and_flags_in_precedence_order():
    assert cfg.load(Sample, parse([]), environ={}) == Sample()
    env = {"SAMPLE_PORT": "6000", "SAMPLE_ENABLED": "yes", "SAMPLE_URL": "http://q:6333"}
    assert cfg.load(Sample, parse([]), environ=env) == Sample(port=6000, enabled=True, url="http://q:6333")
    assert cfg.load(Sample, parse(["--port", "7000"]), environ=env).port == 7000


def test_empty_optional_env_means_unset():
    assert cfg.load(Sample, None, environ={"SAMPLE_URL": ""}).url is None


@pytest.mark.parametrize("env,needle", [({"SAMPLE_PORT": "abc"}, "SAMPLE_PORT"), ({"SAMPLE_ENABLED": "maybe"}, "SAMPLE_ENABLED")])
def test_bad_values_name_the_variable(env, needle):
    with pytest.raises(cfg.ConfigError, match=needle):
        cfg.load(Sample, None, environ=env)


def test_help_names_env_and_default():
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser, GatewayConfig)
    text = parser.format_help()
    assert "GATEWAY_PORT" in text and "50051" in text and "RERANKER_ADDR" in text


def test_service_default_ports():
    assert (GatewayConfig().port, RetrievalConfig().port, RerankerConfig().port) == (50051, 50052, 50053)
    assert (GatewayConfig().metrics_port, RetrievalConfig().metrics_port, RerankerConfig().metrics_port) == (9101, 9102, 9103)


@pytest.mark.parametrize("cls", [GatewayConfig, RetrievalConfig, RerankerConfig])
def test_architecture_doc_lists_every_setting(cls):
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md").read_text()
    missing = [env for env in cfg.env_names(cls) if f"`{env}`" not in doc]
    assert not missing, f"docs/ARCHITECTURE.md does not document {missing}; paste `searchctl config-docs` output"


@pytest.mark.parametrize(
    "cls, prefix, port, metrics_port",
    [(GatewayConfig, "GATEWAY", 50051, 9101), (RetrievalConfig, "RETRIEVAL", 50052, 9102), (RerankerConfig, "RERANKER", 50053, 9103)],
)
def test_every_service_shares_the_server_settings(cls, prefix, port, metrics_port):
    """The settings every server has are declared once (server_settings), named after the service."""
    import dataclasses
    import inspect

    first = dataclasses.fields(cls)[:5]
    assert [(f.name, f.metadata["env"], f.default) for f in first] == [
        ("host", f"{prefix}_HOST", "0.0.0.0"),
        ("port", f"{prefix}_PORT", port),
        ("metrics_port", f"{prefix}_METRICS_PORT", metrics_port),
        ("grace_seconds", f"{prefix}_GRACE_SECONDS", 10.0),
        ("log_level", "LOG_LEVEL", "INFO"),
    ]
    own = inspect.getsource(inspect.getmodule(cls))
    assert f'"{prefix}_HOST"' not in own and "LOG_LEVEL" not in own, "declared again instead of derived from server_settings"
    loaded = cfg.load(cls, argparse.Namespace(), {f"{prefix}_PORT": "6000"})
    assert loaded.port == 6000 and loaded.host == "0.0.0.0"


@dataclass(frozen=True)
class Chosen:
    mode: str = cfg.setting("fast", "SAMPLE_MODE", "mode", choices=("fast", "slow"))


def test_a_setting_with_choices_takes_one_of_them_as_written_in_the_list():
    assert cfg.load(Chosen, None, environ={"SAMPLE_MODE": " SLOW "}).mode == "slow"
    with pytest.raises(cfg.ConfigError, match="invalid value 'quick' for SAMPLE_MODE: expected one of fast, slow"):
        cfg.load(Chosen, None, environ={"SAMPLE_MODE": "quick"})
    with pytest.raises(cfg.ConfigError, match="for --mode: expected one of fast, slow"):
        cfg.load(Chosen, argparse.Namespace(mode="quick"), environ={})


@pytest.mark.parametrize("cls", [GatewayConfig, RerankerConfig, RetrievalConfig])
def test_every_default_is_one_of_its_choices(cls):
    for field in dataclasses.fields(cls):
        choices = field.metadata.get("choices", ())
        assert not choices or field.default in choices, (field.name, field.default, choices)


def test_a_config_built_in_code_is_held_to_the_same_choices():
    with pytest.raises(cfg.ConfigError, match="invalid value 'cut' for RETRIEVAL_LONG_DOCUMENTS: expected one of"):
        RetrievalConfig(long_documents="cut")
    with pytest.raises(cfg.ConfigError, match="for RERANKER_BATCHING"):
        RerankerConfig(batching="always")
    assert GatewayConfig(rerank_policy="never").rerank_policy == "never"
