"""Property: no input file, however malformed, makes `searchctl ingest` print INTERNAL or a
traceback. Files mix good documents with truncated lines, fields of the wrong
type, invalid UTF-8, unpaired surrogates, numbers protobuf cannot hold, nesting past every
limit, documents with neither title nor text, a text past the API's limit and a document past
a batch's 4 MiB. The command runs in this process (a traceback would be an exception out of
main) against the real stack; a run ends 0 or 1 with one-line reasons, and with --skip-bad it
always ends 0, every line either ingested or counted as skipped."""

from __future__ import annotations

import contextlib
import io
import json
import re
import uuid

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from services.cli.main import main  # noqa: E402
from services.common import validation  # noqa: E402

pytestmark = pytest.mark.integration

EXAMPLES = 25
GOOD = st.builds(lambda i, t: json.dumps({"id": f"d{i}", "title": f"Note {i}", "text": t}).encode(),
                 st.integers(0, 30), st.sampled_from(["tides and the moon", "bread rises", "", "lava"]))
TRUNCATED = GOOD.flatmap(lambda line: st.integers(1, len(line) - 1).map(lambda n: line[:n]))
JSON_ANY = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
                        max_leaves=8)
WRONG_TYPES = st.dictionaries(st.sampled_from(["id", "_id", "title", "text", "payload", "metadata"]), JSON_ANY,
                              min_size=1, max_size=4).map(lambda d: json.dumps(d).encode())
ODD = st.sampled_from([
    b'{"id": "u1", "text": "caf\xe9"}',  # not UTF-8
    b'{"id": "u2", "text": "lone \\ud800"}',  # an unpaired surrogate
    b'{"id": "u3", "text": "t", "payload": {"n": 1' + b"0" * 400 + b"}}",  # a number no double holds
    b'{"id": "u4", "text": "t", "payload": {"deep": ' + b"[" * 40 + b"]" * 40 + b"}}",  # deeper than the API's 16
    b"[" * 50000 + b"]" * 50000,  # deeper than Python's JSON parser goes
    b'{"id": "u5", "title": " ", "text": "\\n"}',  # neither title nor text
    json.dumps({"id": "u6", "text": "x" * (validation.MAX_TEXT_CHARS + 1)}).encode(),  # past the API's limit
    json.dumps({"id": "u7", "text": "y" * (5 << 20)}).encode(),  # past a batch's 4 MiB
    b'{"id": "u8", "text": "t", "payload": {"x": NaN}}',  # JSON has no NaN; Python's parser takes it
    b"\xef\xbb\xbf" + json.dumps({"id": "u9", "text": "a byte-order mark first"}).encode(),
])
LINES = st.lists(GOOD | TRUNCATED | WRONG_TYPES | ODD | st.binary(max_size=30) | st.just(b""), min_size=1, max_size=10)


def searchctl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("skip_bad", [False, True], ids=["stop", "skip-bad"])
def test_no_input_file_makes_ingest_print_internal_or_a_traceback(stack, tmp_path_factory, skip_bad):
    outcomes: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(lines=LINES)
    def prop(lines):
        path = tmp_path_factory.mktemp("fuzz") / "docs.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        collection = f"fz{uuid.uuid4().hex[:10]}"
        code, out, err = searchctl("ingest", str(path), "--collection", collection, "--target", stack.gateway,
                                   "--batch-size", "3", *(["--skip-bad"] if skip_bad else []))
        outcomes[code] = outcomes.get(code, 0) + 1
        assert "INTERNAL" not in err and "Traceback" not in err, err
        reasons = [line for line in err.splitlines() if line.startswith("searchctl ingest:")]
        if skip_bad:
            assert code == 0, err
            ingested = int(re.search(r"ingested (\d+) documents", out).group(1))
            skipped = int(m.group(1)) if (m := re.search(r"skipped (\d+) lines", out)) else 0
            assert ingested + skipped == sum(1 for line in path.read_bytes().split(b"\n") if line.strip()), (out, err)
        else:
            assert code in (0, 1), err
            assert (code == 1) == bool(reasons), err
            if code == 1:  # the reason names the line (a bad line, or the document the service refused)
                assert f"{path}:" in err, err

    prop()
    print(f"\nFIGURES ingest fuzz ({'--skip-bad' if skip_bad else 'stop at the first bad line'}): "
          f"{EXAMPLES} files, exit codes {outcomes}")
