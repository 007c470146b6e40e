#!/usr/bin/env python3
"""Validate an Envoy bootstrap (YAML) strictly against Envoy's v3 API protos.

Run by the isolated tools venv (scripts/setup_xds_env.sh), never by .venv: the
``xds-protos`` package ships its own opentelemetry/proto, google/api and google/rpc
modules that would shadow the services' packages::

    .venv-xds/bin/python scripts/validate_envoy.py deploy/envoy/envoy.yaml
    .venv-xds/bin/python scripts/validate_envoy.py --dump deploy/envoy/envoy.yaml   # canonical JSON

What is checked, in order:

1. YAML -> JSON -> ``json_format.ParseDict`` into ``envoy.config.bootstrap.v3.Bootstrap``
   with ``ignore_unknown_fields=False``: a misspelt or misplaced field fails.
2. Every ``typed_config`` / ``typed_extension_protocol_options`` ``Any`` is resolved: the
   proto package named by its ``@type`` is imported first, so an unknown type URL
   fails, and the Any's own fields are parsed as strictly as the rest.
3. The protoc-gen-validate rules Envoy enforces at load time (a practical subset):
   required messages and oneofs, string/bytes lengths, repeated item counts, numeric
   and duration bounds (also on wrapper types), defined-only enums.
4. No deprecated field or enum value, and nothing marked ``disallowed_by_default``.

Exit status 0 when valid; 1 with one line per problem on stderr otherwise; 2 on usage
or environment errors. ``--dump`` prints the parsed bootstrap as canonical JSON (field
names as in the protos, Any messages expanded) for tests to assert on.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from pathlib import Path
from typing import Any

try:
    import yaml
    from google.protobuf import any_pb2, descriptor, descriptor_pool, json_format, message, message_factory
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from validate import validate_pb2
except ImportError as exc:  # pragma: no cover - environment problem, not a config problem
    print(
        f"validate_envoy: {exc}. Run with the tools venv: scripts/setup_xds_env.sh, then "
        ".venv-xds/bin/python scripts/validate_envoy.py",
        file=sys.stderr,
    )
    sys.exit(2)

try:  # envoy.annotations carries `disallowed_by_default`; older xds-protos may lack it
    from envoy.annotations import deprecation_pb2
except ImportError:  # pragma: no cover
    deprecation_pb2 = None

TYPE_PREFIX = "type.googleapis.com/"
WRAPPERS = {
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}
NUMERIC_RULES = (
    "float", "double", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
    "fixed32", "fixed64", "sfixed32", "sfixed64",
)


class ConfigError(Exception):
    pass


# ---------------------------------------------------------------------------------
# 1 + 2: strict parsing with every Any resolved
# ---------------------------------------------------------------------------------
def _type_urls(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        url = node.get("@type")
        if isinstance(url, str):
            found.add(url)
        for value in node.values():
            found |= _type_urls(value)
    elif isinstance(node, list):
        for value in node:
            found |= _type_urls(value)
    return found


def _import_package_of(full_name: str) -> None:
    """Import every generated module of the proto package that defines ``full_name``."""
    package = full_name.rsplit(".", 1)[0]
    try:
        pkg = importlib.import_module(package)
    except ImportError as exc:
        raise ConfigError(f"@type {TYPE_PREFIX}{full_name}: no proto package {package!r} in xds-protos ({exc})") from exc
    for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")


def resolve_types(doc: Any) -> None:
    pool = descriptor_pool.Default()
    for url in sorted(_type_urls(doc)):
        if not url.startswith(TYPE_PREFIX):
            raise ConfigError(f"@type {url!r} does not start with {TYPE_PREFIX}")
        full_name = url[len(TYPE_PREFIX):]
        _import_package_of(full_name)
        try:
            pool.FindMessageTypeByName(full_name)
        except KeyError as exc:
            raise ConfigError(f"@type {url}: no such message in Envoy's v3 API") from exc


def parse(doc: dict) -> bootstrap_pb2.Bootstrap:
    resolve_types(doc)
    bootstrap = bootstrap_pb2.Bootstrap()
    try:
        json_format.ParseDict(doc, bootstrap, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise ConfigError(f"not a valid envoy.config.bootstrap.v3.Bootstrap: {exc}") from exc
    return bootstrap


# ---------------------------------------------------------------------------------
# 3 + 4: protoc-gen-validate rules and deprecations
# ---------------------------------------------------------------------------------
def _unpack_any(msg: any_pb2.Any) -> message.Message:
    full_name = msg.TypeName()
    desc = descriptor_pool.Default().FindMessageTypeByName(full_name)
    inner = message_factory.GetMessageClass(desc)()
    if not msg.Unpack(inner):
        raise ConfigError(f"cannot unpack Any of type {full_name}")
    return inner


def _field_rules(field: descriptor.FieldDescriptor):
    opts = field.GetOptions()
    if opts.HasExtension(validate_pb2.rules):
        return opts.Extensions[validate_pb2.rules]
    return None


def _check_bounds(path: str, value: float, rules: Any, what: str, errors: list[str]) -> None:
    for bound, ok in (
        ("gt", lambda v, b: v > b),
        ("gte", lambda v, b: v >= b),
        ("lt", lambda v, b: v < b),
        ("lte", lambda v, b: v <= b),
    ):
        if rules.HasField(bound):
            limit = getattr(rules, bound)
            if not ok(value, limit):
                errors.append(f"{path}: {what} {value} violates {bound} {limit}")
    if getattr(rules, "HasField", None) and rules.HasField("const") and value != rules.const:
        errors.append(f"{path}: {what} {value} must equal {rules.const}")
    allowed = list(getattr(rules, "in", []))
    if allowed and value not in allowed:
        errors.append(f"{path}: {what} {value} not in {allowed}")


def _duration_seconds(d: Any) -> float:
    return d.seconds + d.nanos / 1e9


def _check_scalar(path: str, field: descriptor.FieldDescriptor, value: Any, rules: Any, errors: list[str]) -> None:
    kind = rules.WhichOneof("type")
    if kind is None:
        return
    sub = getattr(rules, kind)
    if getattr(sub, "ignore_empty", False) and not value:
        return
    if kind in NUMERIC_RULES:
        _check_bounds(path, value, sub, kind, errors)
    elif kind == "string":
        n_chars, n_bytes = len(value), len(value.encode())
        for name, actual in (("min_len", n_chars), ("min_bytes", n_bytes)):
            if sub.HasField(name) and actual < getattr(sub, name):
                errors.append(f"{path}: string {value!r} shorter than {name} {getattr(sub, name)}")
        for name, actual in (("max_len", n_chars), ("max_bytes", n_bytes)):
            if sub.HasField(name) and actual > getattr(sub, name):
                errors.append(f"{path}: string longer than {name} {getattr(sub, name)}")
        if sub.HasField("len") and n_chars != sub.len:
            errors.append(f"{path}: string length {n_chars} != {sub.len}")
        allowed = list(getattr(sub, "in"))
        if allowed and value not in allowed:
            errors.append(f"{path}: {value!r} not in {allowed}")
    elif kind == "bytes":
        if sub.HasField("min_len") and len(value) < sub.min_len:
            errors.append(f"{path}: bytes shorter than {sub.min_len}")
    elif kind == "enum":
        if sub.defined_only and field.enum_type.values_by_number.get(value) is None:
            errors.append(f"{path}: {value} is not a defined {field.enum_type.full_name} value")
        allowed = list(getattr(sub, "in"))
        if allowed and value not in allowed:
            errors.append(f"{path}: enum {value} not in {allowed}")
        if sub.not_in and value in list(sub.not_in):
            errors.append(f"{path}: enum {value} is excluded")


def _disallowed(options: Any) -> bool:
    return deprecation_pb2 is not None and options.HasExtension(deprecation_pb2.disallowed_by_default)


def check_message(msg: message.Message, path: str, errors: list[str]) -> None:
    desc = msg.DESCRIPTOR
    if desc.full_name == "google.protobuf.Any":
        if msg.type_url:
            check_message(_unpack_any(msg), f"{path}<{msg.TypeName()}>", errors)
        return
    opts = desc.GetOptions()
    if opts.HasExtension(validate_pb2.disabled) and opts.Extensions[validate_pb2.disabled]:
        return

    for oneof in desc.oneofs:
        o_opts = oneof.GetOptions()
        if o_opts.HasExtension(validate_pb2.required) and o_opts.Extensions[validate_pb2.required]:
            if msg.WhichOneof(oneof.name) is None:
                errors.append(f"{path}: one of {[f.name for f in oneof.fields]} is required")

    for field in desc.fields:
        fpath = f"{path}.{field.name}"
        rules = _field_rules(field)
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        is_message = field.type == field.TYPE_MESSAGE
        present = (len(getattr(msg, field.name)) > 0) if repeated else (
            msg.HasField(field.name) if (is_message or field.containing_oneof is not None or field.has_presence)
            else getattr(msg, field.name) != field.default_value
        )

        if present and field.GetOptions().deprecated:
            errors.append(f"{fpath}: deprecated field")
        if present and _disallowed(field.GetOptions()):
            errors.append(f"{fpath}: disallowed by default")

        # protoc-gen-validate checks only the member of a oneof that is set.
        in_unset_oneof = field.containing_oneof is not None and not present
        if rules is not None and not in_unset_oneof and not (rules.HasField("message") and rules.message.skip):
            if repeated and rules.WhichOneof("type") == "repeated":
                rep = rules.repeated
                count = len(getattr(msg, field.name))
                if rep.HasField("min_items") and count < rep.min_items:
                    errors.append(f"{fpath}: needs at least {rep.min_items} item(s), has {count}")
                if rep.HasField("max_items") and count > rep.max_items:
                    errors.append(f"{fpath}: allows at most {rep.max_items} item(s), has {count}")
                if rep.HasField("items") and not is_message:
                    for i, item in enumerate(getattr(msg, field.name)):
                        _check_scalar(f"{fpath}[{i}]", field, item, rep.items, errors)
            elif rules.HasField("message") and rules.message.required and not present:
                errors.append(f"{fpath}: required")
            elif is_message and not repeated and present:
                value = getattr(msg, field.name)
                kind = rules.WhichOneof("type")
                if kind == "duration":
                    d = rules.duration
                    if d.required and not present:
                        errors.append(f"{fpath}: required")
                    secs = _duration_seconds(value)
                    for bound, op in (("gt", float.__gt__), ("gte", float.__ge__), ("lt", float.__lt__), ("lte", float.__le__)):
                        if d.HasField(bound):
                            limit = _duration_seconds(getattr(d, bound))
                            if not op(float(secs), float(limit)):
                                errors.append(f"{fpath}: {secs}s violates {bound} {limit}s")
                elif kind == "any":
                    if rules.any.required and not value.type_url:
                        errors.append(f"{fpath}: required")
                elif kind is not None and field.message_type.full_name in WRAPPERS:
                    _check_scalar(fpath, field, value.value, rules, errors)
            elif is_message and not repeated and not present:
                kind = rules.WhichOneof("type")
                if kind == "duration" and rules.duration.required:
                    errors.append(f"{fpath}: required")
                if kind == "any" and rules.any.required:
                    errors.append(f"{fpath}: required")
            elif not is_message and not repeated:
                _check_scalar(fpath, field, getattr(msg, field.name), rules, errors)

        if field.type == field.TYPE_ENUM and present:
            values = list(getattr(msg, field.name)) if repeated else [getattr(msg, field.name)]
            for v in values:
                ev = field.enum_type.values_by_number.get(v)
                if ev is not None and ev.GetOptions().deprecated:
                    errors.append(f"{fpath}: deprecated enum value {ev.name}")

        if is_message and present:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.type == value_field.TYPE_MESSAGE:
                    for key, item in getattr(msg, field.name).items():
                        check_message(item, f"{fpath}[{key!r}]", errors)
            elif repeated:
                for i, item in enumerate(getattr(msg, field.name)):
                    check_message(item, f"{fpath}[{i}]", errors)
            else:
                check_message(getattr(msg, field.name), fpath, errors)


def validate_file(path: Path) -> tuple[bootstrap_pb2.Bootstrap, list[str]]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: top level is not a mapping")
    # YAML -> JSON text -> dict: exactly the JSON an Envoy loader sees (no YAML-only types).
    doc = json.loads(json.dumps(doc))
    bootstrap = parse(doc)
    errors: list[str] = []
    check_message(bootstrap, "bootstrap", errors)
    return bootstrap, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", default=["deploy/envoy/envoy.yaml"], help="Envoy bootstrap YAML files")
    parser.add_argument("--dump", action="store_true", help="print the parsed bootstrap as canonical JSON")
    args = parser.parse_args(argv)

    status = 0
    for name in args.configs:
        path = Path(name)
        try:
            bootstrap, errors = validate_file(path)
        except ConfigError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = 1
            continue
        for err in errors:
            print(f"{path}: {err}", file=sys.stderr)
        if errors:
            status = 1
            continue
        if args.dump:
            print(json.dumps(json_format.MessageToDict(bootstrap, preserving_proto_field_name=True), indent=1))
        else:
            print(f"{path}: valid envoy.config.bootstrap.v3.Bootstrap", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
