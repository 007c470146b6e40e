"""Connecting the retrieval store to a Qdrant server that is not there (QDRANT_URL, searchctl migrate --to)."""

from __future__ import annotations

import subprocess
import sys

from services.cli.procs import free_port
from tests.conftest import REPO

# In a process of its own: qdrant-client checks the server's version on a thread of its own and
# warns from there, and the filter that silences it is process-wide (set when the backend is imported).
PROBE = r'''
import sys, threading
from services.common.errors import Unavailable
from services.retrieval.backends.qdrant_server import QdrantServerBackend
backend = QdrantServerBackend.connect(sys.argv[1], timeout_s=2)
try:
    backend.list_collections()
except Unavailable as exc:
    print(exc)
for thread in threading.enumerate():  # the client's version check has warned (or not) once it ends
    if thread is not threading.current_thread():
        thread.join(10)
'''


def test_an_unreachable_server_is_unavailable_naming_it_without_the_clients_version_warning():
    url = f"http://127.0.0.1:{free_port()}"
    run = subprocess.run([sys.executable, "-W", "default", "-c", PROBE, url], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Qdrant is unreachable during list collections:") and "Connection refused" in run.stdout
    assert "server version" not in run.stderr and "check_compatibility" not in run.stderr, run.stderr
