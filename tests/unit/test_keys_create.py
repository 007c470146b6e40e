"""`searchctl keys create` (services/cli/keys_cmd.py): a mistake in the flags is named as such and changes nothing."""

from __future__ import annotations

import pytest

from services.cli.keys_cmd import create
from services.common.config import ConfigError
from services.gateway import callers


def test_a_new_caller_is_appended_and_the_file_parses(tmp_path):
    path = tmp_path / "callers.toml"
    first, _ = create(path, "bob", ["search"], [])
    second, _ = create(path, "carol", ["search", "write"], ["team-*"])
    parsed = callers.parse(path.read_text(), str(path))
    assert [c.name for c in parsed.callers] == ["bob", "carol"] and first != second
    assert oct(path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("name, scopes, message", [
    ("bob", ["search"], "caller 'bob' already exists in {path}: choose another --name"),
    ("eve", ["root"], "caller 'eve': unknown scope 'root' (scopes: search, write, admin)"),
    ("no spaces", ["search"], "name must be 1-63 letters, digits, '.', '_' or '-' (got 'no spaces')"),
])
def test_a_mistake_in_the_flags_is_named_without_a_line_and_changes_nothing(tmp_path, name, scopes, message):
    path = tmp_path / "callers.toml"
    create(path, "bob", ["search"], [])
    before = path.read_text()
    with pytest.raises(ConfigError) as exc:
        create(path, name, scopes, [])
    assert str(exc.value) == message.format(path=path)
    assert path.read_text() == before


def test_a_broken_file_is_named_with_its_line(tmp_path):
    path = tmp_path / "callers.toml"
    create(path, "bob", ["search"], [])
    path.write_text(path.read_text().replace('"search"', '"serch"'))
    with pytest.raises(ConfigError, match=r"callers.toml line 2: caller 'bob': unknown scope 'serch'"):
        create(path, "carol", ["search"], [])


def test_a_bad_collection_pattern_is_named_without_a_line(tmp_path):
    with pytest.raises(ConfigError) as exc:
        create(tmp_path / "callers.toml", "dave", ["search"], ["no spaces*"])
    assert str(exc.value).startswith("caller 'dave': collections: 'no spaces*': "), str(exc.value)
    assert not (tmp_path / "callers.toml").exists()
