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


@dataclass(frozen=True)
class Bounded:
    workers: int = cfg.setting(4, "SAMPLE_WORKERS", "workers", minimum=1)
    weight: float = cfg.setting(0.4, "SAMPLE_WEIGHT", "weight", minimum=0, maximum=1)
    timeout: float = cfg.setting(3.0, "SAMPLE_TIMEOUT", "timeout", above=0)
    free: float = cfg.setting(1.0, "SAMPLE_FREE", "any finite number")


@pytest.mark.parametrize("env, message", [
    ({"SAMPLE_WORKERS": "0"}, "invalid value '0' for SAMPLE_WORKERS: must be at least 1"),
    ({"SAMPLE_WEIGHT": "1.5"}, "invalid value '1.5' for SAMPLE_WEIGHT: must be between 0 and 1"),
    ({"SAMPLE_WEIGHT": "-0.01"}, "invalid value '-0.01' for SAMPLE_WEIGHT: must be between 0 and 1"),
    ({"SAMPLE_TIMEOUT": "0"}, "invalid value '0' for SAMPLE_TIMEOUT: must be above 0"),
    ({"SAMPLE_TIMEOUT": "nan"}, "invalid value 'nan' for SAMPLE_TIMEOUT: must be a finite number"),
    ({"SAMPLE_FREE": "inf"}, "invalid value 'inf' for SAMPLE_FREE: must be a finite number"),
])
def test_a_number_outside_its_bounds_stops_the_load_naming_the_setting(env, message):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(Bounded, None, environ=env)
    assert str(err.value) == message


def test_bounds_are_inclusive_except_above_and_checked_for_flags_and_code_too():
    loaded = cfg.load(Bounded, None, environ={"SAMPLE_WORKERS": "1", "SAMPLE_WEIGHT": "1", "SAMPLE_TIMEOUT": "0.001"})
    assert (loaded.workers, loaded.weight, loaded.timeout) == (1, 1.0, 0.001)
    with pytest.raises(cfg.ConfigError, match=r"^invalid value '0' for --workers: must be at least 1$"):
        cfg.load(Bounded, argparse.Namespace(workers="0"), environ={})
    with pytest.raises(cfg.ConfigError, match=r"^invalid value 0 for SAMPLE_WORKERS: must be at least 1$"):
        cfg.check_settings(Bounded(workers=0))
    with pytest.raises(cfg.ConfigError, match="for RETRIEVAL_WORKERS: must be at least 1"):
        RetrievalConfig(workers=0)


def test_help_and_the_docs_table_say_which_values_a_setting_takes():
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser, Bounded)
    text = " ".join(parser.format_help().split())
    assert "[env SAMPLE_WORKERS; default: 4; at least 1]" in text
    assert "[env SAMPLE_WEIGHT; default: 0.4; between 0 and 1]" in text
    assert "[env SAMPLE_TIMEOUT; default: 3.0; above 0]" in text
    assert "[env SAMPLE_FREE; default: 1.0]" in text
    table = cfg.markdown_table(Chosen).splitlines()
    assert table[0] == "| env var | flag | default | values | meaning |"
    assert table[2] == "| `SAMPLE_MODE` | `--mode` | `fast` | one of fast, slow | mode |"


@pytest.mark.parametrize("cls", [GatewayConfig, RerankerConfig, RetrievalConfig])
def test_every_number_a_service_reads_is_bounded_and_its_default_within_them(cls):
    import typing

    hints = typing.get_type_hints(cls)
    unbounded = [field.metadata["env"] for field in dataclasses.fields(cls)
                 if hints[field.name] in (int, float) and not {"minimum", "above"} & set(field.metadata)]
    assert not unbounded, f"declare minimum= (or above=) for {unbounded}"
    cfg.check_settings(cls())  # every default within its own bounds
