"""services.gateway.callers: the callers file (TOML and the old one-key-per-line format), its
errors naming the line, key and identity lookup, reload keeping the rules in force on a bad file."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.common.config import ConfigError
from services.gateway import callers
from services.gateway.callers import CallersSource, load

KEY_WEB = "web-key-0123456789abcdef"
KEY_OPS = "ops-key-0123456789abcdef"

FILE = f"""# the platform's callers
[defaults.quota]
search = {{ rate = 50, burst = 100 }}

[[caller]]
name = "web"
scopes = ["search"]
collections = ["docs", "products-*"]
keys = ["{KEY_WEB}"]
identities = ["spiffe://cluster.local/ns/web/sa/frontend"]
quota.write = {{ rate = 2 }}

[[caller]]
name = "ops"
scopes = ["search", "write", "admin"]
keys = ["{KEY_OPS}"]
quota.search = {{ rate = 5, burst = 10 }}
"""


def write(tmp_path, text: str):
    path = tmp_path / "callers.toml"
    path.write_text(text)
    return str(path)


def test_a_callers_file_names_each_caller_with_scopes_collections_identities_and_quotas(tmp_path):
    book = load(write(tmp_path, FILE), None)
    web, ops = book.by_name["web"], book.by_name["ops"]
    assert web.scopes == {"search"} and web.collections == ("docs", "products-*") and web.line == 5
    assert web.quotas == {"search": callers.Quota(50, 100), "write": callers.Quota(2, 2)}  # defaults, then its own
    assert ops.quotas["search"] == callers.Quota(5, 10)
    assert book.by_key(KEY_WEB) is web and book.by_key(KEY_OPS) is ops
    assert book.by_key(KEY_WEB + "x") is None and book.by_key("") is None
    assert book.by_identity(["https://other", "spiffe://cluster.local/ns/web/sa/frontend"]) is web
    assert book.by_identity(["spiffe://cluster.local/ns/web/sa/other"]) is None
    assert book.summary() == {"callers": ["ops", "web"], "keys": 2, "identities": 1, "legacy_keys": 0}
    assert KEY_WEB not in repr(book.summary())


def test_collections_match_names_and_prefixes():
    caller = callers.Caller("c", frozenset({"search"}), ("docs", "logs-*"))
    assert caller.reaches("docs") and caller.reaches("logs-2024") and caller.reaches("logs-")
    assert not caller.reaches("docs2") and not caller.reaches("logs") and not caller.reaches("other")
    assert callers.Caller("all", frozenset({"search"})).reaches("anything")
    assert callers.collection_patterns(["docs", "*"], "x") == ()  # "*" is every collection


def test_the_old_one_key_per_line_file_still_works_with_every_scope(tmp_path, caplog):
    path = tmp_path / "keys"
    path.write_text("# team keys\nalpha-key\n\n  beta-key  \n")
    book = load(str(path), "gamma, delta,,")
    legacy = book.by_name[callers.LEGACY]
    assert book.by_key("alpha-key") is legacy and book.by_key("delta") is legacy
    assert legacy.scopes == set(callers.SCOPES) and not legacy.restricted and not legacy.quotas
    assert book.legacy_keys == 4
    with caplog.at_level(logging.INFO, logger="services.gateway.callers"):
        callers.announce(book)
        callers.announce(book, reloaded=True)
    said = [r.getMessage() for r in caplog.records if "one-key-per-line" in r.getMessage()]
    assert len(said) == 1 and "every scope" in said[0]  # once, at start-up


def test_inline_callers_in_the_file_format_and_the_file_together(tmp_path):
    inline = f'[[caller]]\nname = "tests"\nscopes = ["admin"]\nkeys = ["inline-key-0123456789"]\n'
    book = load(write(tmp_path, FILE), inline)
    assert book.by_key("inline-key-0123456789").name == "tests"
    assert set(book.by_name) == {"web", "ops", "tests"}
    assert load(None, None).enabled is False


@pytest.mark.parametrize(
    "replace, needle",
    [
        (('scopes = ["search"]', 'scopes = ["serch"]'), "line 5: caller 'web': unknown scope 'serch'"),
        (('name = "ops"', 'name = "web"'), "line 13: caller 'web' is defined twice"),
        (('keys = ["ops-key', 'keys = ["web-key'), "line 13: caller 'ops' has the same key as caller 'web' (GATEWAY_API_KEYS_FILE="),
        (('quota.write = { rate = 2 }', 'quota.writes = { rate = 2 }'), "line 5: caller 'web': quota for unknown method class 'writes'"),
        (('quota.write = { rate = 2 }', 'quota.write = { rate = 0 }'), "line 5: caller 'web': quota.write: rate must be > 0"),
        (('quota.write = { rate = 2 }', 'scope = ["admin"]'), "line 5: unknown field 'scope'"),
        (('collections = ["docs", "products-*"]', 'collections = ["docs", "bad name"]'), "line 5: caller 'web': collections: 'bad name'"),
        (('identities = ["spiffe://cluster.local/ns/web/sa/frontend"]', 'identities = ["frontend"]'), "line 5: caller 'web': identity 'frontend' is not a URI"),
        (('name = "web"', 'name = "we b"'), "line 5: name must be"),
        (('name = "web"', 'name = "other"'), "line 5: 'other' is reserved"),
        (('keys = ["ops-key-0123456789abcdef"]', ''), "line 13: caller 'ops' has neither keys nor identities"),
        (('[[caller]]\nname = "ops"', '[[caller]]\nname = "ops'), "not valid TOML"),
        (('[defaults.quota]', '[default.quota]'), "line 2: unknown table or key 'default'"),
    ],
)
def test_a_bad_line_names_the_line_and_stops_start_up(tmp_path, replace, needle):
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, FILE.replace(*replace, 1)), None)
    assert needle in str(info.value)
    assert "GATEWAY_API_KEYS_FILE=" in str(info.value)
    assert KEY_WEB not in str(info.value) and KEY_OPS not in str(info.value)


def test_a_bad_line_of_the_old_format_names_the_line(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# keys\nalpha-key\nbeta key\n")
    with pytest.raises(ConfigError, match=r"keys line 3: a key is one word"):
        load(str(path), None)


def test_a_missing_or_empty_file_stops_start_up(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(str(tmp_path / "nope"), None)
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(ConfigError, match="holds no key"):
        load(str(empty), None)


def test_reload_takes_a_good_file_and_keeps_the_rules_in_force_on_a_bad_one(tmp_path, caplog):
    path = write(tmp_path, FILE)
    source = CallersSource(path, None)
    seen = []
    source.listeners.append(seen.append)
    assert not source.changed()
    (tmp_path / "callers.toml").write_text(FILE.replace('scopes = ["search"]', 'scopes = ["search", "write"]'))
    assert source.changed() and source.reload()
    assert source.book.by_key(KEY_WEB).scopes == {"search", "write"}
    before = source.book
    (tmp_path / "callers.toml").write_text(FILE.replace('scopes = ["search"]', 'scopes = ["everything"]'))
    with caplog.at_level(logging.ERROR, logger="services.gateway.callers"):
        assert not source.reload()
    assert source.book is before  # the rules in force stay
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "line 5" in errors[0] and "unknown scope 'everything'" in errors[0]
    assert seen == [source.book, None] and source.failures == 1 and source.reloads == 1
    assert not source.changed()  # the bad content was seen: not retried until it changes again


async def test_watch_reloads_when_the_file_changes(tmp_path):
    path = write(tmp_path, FILE)
    source = CallersSource(path, None)
    task = asyncio.ensure_future(source.watch(0.02))
    try:
        (tmp_path / "callers.toml").write_text(FILE.replace('name = "ops"', 'name = "ops2"'))
        for _ in range(500):
            if "ops2" in source.book.by_name:
                break
            await asyncio.sleep(0.02)
        assert "ops2" in source.book.by_name and source.reloads == 1
    finally:
        task.cancel()


def test_entry_text_appends_a_caller_that_parses(tmp_path):
    text = FILE + callers.entry_text("bot", ["search", "write"], ["logs-*"], "a-new-key-0123456789abcdef")
    parsed = callers.parse(text, "f")
    bot = next(c for c in parsed.callers if c.name == "bot")
    header = [n for n, line in enumerate(text.splitlines(), 1) if line == "[[caller]]"][-1]
    assert bot.scopes == {"search", "write"} and bot.collections == ("logs-*",) and bot.line == header
    assert bot.quotas == {"search": callers.Quota(50, 100)}  # the file's defaults apply to it too


def test_an_old_file_rewritten_in_the_callers_format_keeps_its_rights():
    text = callers.legacy_as_callers("# team\nalpha-key-0123456789\nbeta-key-0123456789\n")
    parsed = callers.parse(text, "f")
    assert text.startswith("# team\n")
    assert [c.name for c in parsed.callers] == [callers.LEGACY]
    assert parsed.callers[0].scopes == set(callers.SCOPES)
    assert [k for k, _ in parsed.keys] == ["alpha-key-0123456789", "beta-key-0123456789"]
