"""Typed service configuration read from environment variables, each also a flag.

A service declares its settings as a frozen dataclass whose fields are built with
:func:`setting`. :func:`load` resolves every field with the precedence
``--flag`` > environment variable > default, so containers configure a service with
env vars only and a developer can override one value on the command line.
The same declarations render the ``--help`` text and the configuration tables in
docs/ARCHITECTURE.md (:func:`markdown_table`), so the docs cannot drift from the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A configuration value cannot be parsed; the message names the env var and the flag."""


def setting(default: Any, env: str, help: str, choices: Sequence[str] = (),  # noqa: A002 - mirrors argparse
            minimum: float | None = None, maximum: float | None = None, above: float | None = None) -> Any:
    """Declare a dataclass field configurable by ``env`` and by a flag named after the field.

    ``choices``: the values a text setting may take. ``minimum`` / ``maximum`` (inclusive) and
    ``above`` (exclusive) bound a number; a float setting is finite whatever its bounds. A value
    outside them stops the load with the setting's name, before anything starts."""
    bounds = {key: value for key, value in (("minimum", minimum), ("maximum", maximum), ("above", above))
              if value is not None}
    return dataclasses.field(default=default, metadata={"env": env, "help": help, "choices": tuple(choices), **bounds})


def server_settings(prefix: str, grpc_port: int, metrics_port_default: int) -> type:
    """The settings every service's server has, named after ``prefix`` (``GATEWAY_HOST``,
    ``GATEWAY_PORT``, ...): the frozen dataclass a service's config class derives from, whose
    own settings follow these in ``--help`` and the tables."""

    @dataclasses.dataclass(frozen=True)
    class ServerSettings:
        host: str = setting("0.0.0.0", f"{prefix}_HOST", "address to listen on")
        port: int = setting(grpc_port, f"{prefix}_PORT", "gRPC port", minimum=0, maximum=65535)
        metrics_port: int = setting(metrics_port_default, f"{prefix}_METRICS_PORT",
                                    "Prometheus /metrics port, on the same address as the gRPC port (0 disables)",
                                    minimum=0, maximum=65535)
        grace_seconds: float = setting(10.0, f"{prefix}_GRACE_SECONDS", "time in-flight calls get to finish on SIGTERM",
                                       minimum=0)
        log_level: str = setting("INFO", "LOG_LEVEL", "log level")

        def __post_init__(self) -> None:  # a config built in code too (load() checks first, naming the flag)
            check_settings(self)

    ServerSettings.__qualname__ = ServerSettings.__name__ = f"{prefix.title()}ServerSettings"
    return ServerSettings


def check_settings(settings: Any) -> None:
    """ConfigError unless every setting holds a value its declaration allows (choices, bounds)."""
    for field in dataclasses.fields(settings):
        if "env" not in field.metadata:
            continue
        value = getattr(settings, field.name)
        problem = value_problem(field, value)
        if problem:
            raise ConfigError(f"invalid value {value!r} for {field.metadata['env']}: {problem}")


def value_problem(field: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with ``value`` for ``field`` (a :func:`setting`), or None."""
    meta = field.metadata
    choices = meta.get("choices", ())
    if choices and value not in choices:
        return f"expected one of {', '.join(choices)}"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    low, high, above = meta.get("minimum"), meta.get("maximum"), meta.get("above")
    if (low is not None and value < low) or (high is not None and value > high) or (above is not None and value <= above):
        return f"must be {allowed(field)}"
    return None


def allowed(field: dataclasses.Field) -> str:
    """The values ``field`` takes, in words (``one of a, b``, ``between 0 and 1``, ``at least 1``,
    ``above 0``), or '' for any value of its type."""
    meta = field.metadata
    if meta.get("choices"):
        return "one of " + ", ".join(meta["choices"])
    low, high, above = (_number(meta.get(key)) for key in ("minimum", "maximum", "above"))
    if low is not None and high is not None:
        return f"between {low} and {high}"
    words = [f"at least {low}" if low is not None else "", f"above {above}" if above is not None else "",
             f"at most {high}" if high is not None else ""]
    return " and ".join(word for word in words if word)


def _number(value: float | None) -> str | None:
    if value is None:
        return None
    return str(int(value)) if float(value).is_integer() else str(value)


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected one of {sorted(_TRUE | _FALSE - {''})}, got {raw!r}")


def _converter(tp: Any):
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _converter(args[0])
        return lambda raw: None if raw.strip() == "" else inner(raw)
    if tp is bool:
        return _parse_bool
    if tp in (int, float, str):
        return tp
    if tp is Path:
        return lambda raw: Path(raw).expanduser()
    raise TypeError(f"unsupported setting type {tp!r}")


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if "env" in f.metadata]


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per setting; the help names the env var and the default."""
    for field, tp in _fields(cls):
        default = field.default
        parser.add_argument(
            flag_name(field.name),
            dest=field.name,
            default=None,
            metavar=field.name.upper(),
            help=f"{field.metadata['help']} [env {field.metadata['env']}; default: {_show(default)}"
                 f"{'; ' + allowed(field) if allowed(field) else ''}]",
        )
        del tp


def _show(value: Any) -> str:
    if value is None or value == "":
        return "unset"
    return str(value)


def load(cls: type[T], args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> T:
    """Build ``cls`` from flags (``args``), then env vars, then defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field, tp in _fields(cls):
        env = field.metadata["env"]
        raw = getattr(args, field.name, None) if args is not None else None
        source = flag_name(field.name)
        if raw is None and env in environ:
            raw, source = environ[env], env
        if raw is None:
            continue
        try:
            values[field.name] = _converter(tp)(raw) if isinstance(raw, str) else raw
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid value {raw!r} for {source} ({field.metadata['help']}): {exc}") from exc
        if field.metadata.get("choices"):  # compared and kept as written in the list: ' CPU' is 'cpu'
            values[field.name] = str(values[field.name]).strip().lower()
        problem = value_problem(field, values[field.name])
        if problem:
            raise ConfigError(f"invalid value {raw!r} for {source}: {problem}")
    return cls(**values)


def markdown_table(cls: type) -> str:
    """The configuration table of ``cls`` for the docs: env var, flag, default, values, meaning."""
    lines = ["| env var | flag | default | values | meaning |", "|---|---|---|---|---|"]
    for field, _ in _fields(cls):
        lines.append(
            f"| `{field.metadata['env']}` | `{flag_name(field.name)}` | `{_show(field.default)}` | {allowed(field)} "
            f"| {field.metadata['help']} |"
        )
    return "\n".join(lines)


def env_names(cls: type) -> Sequence[str]:
    return [field.metadata["env"] for field, _ in _fields(cls)]
