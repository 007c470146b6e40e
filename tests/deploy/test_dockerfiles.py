"""Dockerfiles: multi-stage, pinned bases, non-root, the services' ports and commands, models
fetched at build time, CPU vs CUDA ONNX Runtime; hadolint clean; .dockerignore keeps the
context to what `pip install .` needs. The HEALTHCHECK one-liners are executed here against
real gRPC health servers. No image is built (no container engine here).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="Python 3.10 needs tomli to read pyproject.toml")

from services.cli.procs import free_port, wait_serving

from .support import GRPC_PORTS, METRICS_PORTS, REPO, xds_tool

DOCKERFILES = {
    "gateway": REPO / "services" / "gateway" / "Dockerfile",
    "retrieval": REPO / "services" / "retrieval" / "Dockerfile",
    "reranker": REPO / "services" / "reranker" / "Dockerfile",
    "reranker-cuda": REPO / "services" / "reranker" / "Dockerfile.cuda",
}
MODEL_OF = {"retrieval": "bge-small-en", "reranker": "ms-marco-MiniLM-L-12-v2"}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [args for o, args in self.instructions if o == op]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                out[key] = value
        return out


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def resolve(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: self.args.get(m.group(1), m.group(0)), text)


def parse(path: Path) -> Dockerfile:
    logical: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, f"{path}: dangling line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        op, _, args = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            stages.append(Stage(base=m.group(1), name=m.group(2)))
        elif not stages:
            assert op == "ARG", f"{path}: only ARG may precede FROM, got {op}"
            key, _, value = args.partition("=")
            global_args[key.strip()] = value.strip()
        else:
            stages[-1].instructions.append((op, args.strip()))
    return Dockerfile(global_args, stages)


def service_of(variant: str) -> str:
    return variant.split("-")[0]


def onnxruntime_pin() -> str:
    (req,) = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("onnxruntime-gpu")]
    return req.split("==")[1]


# --------------------------------------------------------------------------- structure
@pytest.mark.parametrize("variant", DOCKERFILES)
def test_multi_stage_with_pinned_bases(variant):
    df = parse(DOCKERFILES[variant])
    assert len(df.stages) >= 2 and df.final.name == "runtime"
    for stage in df.stages:
        base = df.resolve(stage.base)
        if base in {s.name for s in df.stages}:
            continue  # FROM an earlier stage
        if variant.endswith("cuda"):
            assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.\d\d", base), base
        else:
            assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base), base


def test_cuda_base_matches_the_pinned_onnxruntime_gpu():
    """onnxruntime-gpu is built against one CUDA major.minor; the runtime image must ship it."""
    ort = pytest.importorskip("onnxruntime")
    info = pytest.importorskip("onnxruntime.capi.build_and_package_info")
    if getattr(info, "package_name", "") != "onnxruntime-gpu" or ort.__version__ != onnxruntime_pin():
        pytest.skip(f"installed onnxruntime is not onnxruntime-gpu=={onnxruntime_pin()}")
    df = parse(DOCKERFILES["reranker-cuda"])
    base = df.resolve(df.final.base)
    assert base.startswith(f"nvidia/cuda:{info.cuda_version}."), (base, info.cuda_version)


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_runtime_stage_runs_the_service_unprivileged(variant):
    service = service_of(variant)
    df = parse(DOCKERFILES[variant])
    final = df.final
    (user,) = final.all("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user
    (entrypoint,) = final.all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["searchctl", "serve", service]
    (expose,) = final.all("EXPOSE")
    assert {int(p) for p in expose.split()} == {GRPC_PORTS[service], METRICS_PORTS[service]}
    env = final.env()
    prefix = service.upper()
    assert env[f"{prefix}_PORT"] == str(GRPC_PORTS[service])
    assert env[f"{prefix}_METRICS_PORT"] == str(METRICS_PORTS[service])
    assert env[f"{prefix}_HOST"] == "0.0.0.0"
    assert env["PATH"].startswith("/opt/venv/bin")
    assert any("--from=build /opt/venv /opt/venv" in c for c in final.all("COPY"))


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_build_installs_the_project(variant):
    df = parse(DOCKERFILES[variant])
    build = df.stage("build")
    copied = {src for c in build.all("COPY") for src in c.split()[:-1]}
    assert {"pyproject.toml", "README.md", "gen/", "services/"} <= copied
    # Every package pyproject declares is inside what is copied.
    package_dir = PYPROJECT["tool"]["setuptools"]["package-dir"]
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        top, *rest = package.split(".")
        root = package_dir.get(top, top)
        path = REPO / root / Path(*rest)
        assert path.is_dir(), package
        assert any(str(path.relative_to(REPO)).startswith(c.rstrip("/")) for c in copied), package
    assert PYPROJECT["project"]["readme"] in copied
    runs = " ".join(build.all("RUN"))
    assert "pip install ." in runs
    if variant.endswith("cuda"):
        assert "onnxruntime-gpu" not in runs  # keeps the project's onnxruntime-gpu
        assert "CUDAExecutionProvider" in runs
        assert df.final.env()["ORT_PROVIDER"] == "cuda"
    else:
        # CPU images swap in the CPU build of exactly the pinned version.
        assert "pip uninstall -y onnxruntime-gpu" in runs
        (arg,) = [a for a in build.all("ARG") if a.startswith("ORT_CPU_PACKAGE=")]
        assert arg == f"ORT_CPU_PACKAGE=onnxruntime=={onnxruntime_pin()}"


@pytest.mark.parametrize("variant", [v for v in DOCKERFILES if v != "gateway"])
def test_models_are_fetched_at_build_time(variant):
    service = service_of(variant)
    df = parse(DOCKERFILES[variant])
    models = df.stage("models")
    assert models.base == "build"
    assert "FETCH_MODELS=1" in models.all("ARG")
    run = " ".join(models.all("RUN"))
    keep = MODEL_OF[service]
    (drop,) = set(MODEL_OF.values()) - {keep}
    # every fetch names the image's one model, and the build checks the other is absent
    fetches = re.findall(r"searchctl models fetch --models-dir /models([^&;]*)", run)
    assert fetches and all(f"--only {keep}" in f for f in fetches), fetches
    assert f"test ! -e /models/{drop}" in run and f"/models/{keep}/model.onnx" in run
    assert any("--from=models /models /models" in c for c in df.final.all("COPY"))
    assert df.final.env()["SEARCH_MODELS_DIR"] == "/models"


def test_gateway_image_carries_no_models():
    df = parse(DOCKERFILES["gateway"])
    assert "models" not in {s.name for s in df.stages}
    assert "SEARCH_MODELS_DIR" not in df.final.env()


def test_hadolint_is_clean():
    hadolint = xds_tool("hadolint")
    proc = subprocess.run([str(hadolint), *map(str, DOCKERFILES.values())], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- .dockerignore
def _pattern_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            out, i = out + pattern[i : j + 1], j + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rules: the last matching pattern wins, `!` re-includes, a pattern that
    matches a directory matches everything below it, `**` spans directories."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _pattern_regex((raw[1:] if negate else raw).strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_sends_only_the_package():
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=REPO, check=True).stdout.split()
    sent = {p for p in tracked if not dockerignore_excludes(p, patterns)}
    assert {"pyproject.toml", "README.md"} <= sent
    assert any(p.startswith("gen/search/v1/") for p in sent)
    assert any(p.startswith("services/gateway/") for p in sent)
    for p in sent:
        assert p in {"pyproject.toml", "README.md"} or p.startswith(("gen/", "services/")), f"{p} would be sent"
    for p in ("tests/conftest.py", "k8s/base/kustomization.yaml", ".venv/bin/python", ".git/HEAD",
              "services/__pycache__/x.pyc", "services/gateway/__pycache__/server.cpython-311.pyc", ".data/qdrant/x"):
        assert dockerignore_excludes(p, patterns), f"{p} would be sent"


# --------------------------------------------------------------------------- HEALTHCHECK, executed
def healthcheck_argv(variant: str) -> list[str]:
    (hc,) = parse(DOCKERFILES[variant]).final.all("HEALTHCHECK")
    options, _, cmd = hc.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options and "--start-period=" in options
    argv = json.loads(cmd)
    assert argv[:2] == ["python", "-c"], "exec form, no shell"
    assert "grpc_health.v1" in argv[2]
    service = service_of(variant)
    assert f"os.environ.get('{service.upper()}_PORT','{GRPC_PORTS[service]}')" in argv[2]
    return [sys.executable, *argv[1:]]


def run_healthcheck(variant: str, port: int) -> int:
    env = dict(os.environ)
    env[f"{service_of(variant).upper()}_PORT"] = str(port)
    return subprocess.run(healthcheck_argv(variant), env=env, capture_output=True, timeout=30).returncode


@pytest.fixture(scope="module")
def serving_gateway():
    """A real gateway process (it needs no models); its health turns SERVING on start."""
    port = free_port()
    env = dict(os.environ, GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port), GATEWAY_METRICS_PORT="0", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "gateway"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        try:
            wait_serving(f"127.0.0.1:{port}", timeout=60, proc=proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {proc.stdout.read().decode(errors='replace')}") from None
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def not_serving_port():
    """A real grpc.health.v1 server whose overall status is NOT_SERVING (a loading service)."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(0)


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_healthcheck_passes_when_serving(variant, serving_gateway):
    assert run_healthcheck(variant, serving_gateway) == 0


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_healthcheck_fails_when_not_serving(variant, not_serving_port):
    assert run_healthcheck(variant, not_serving_port) == 1


@pytest.mark.parametrize("variant", ["gateway", "reranker-cuda"])
def test_healthcheck_fails_when_nothing_listens(variant):
    assert run_healthcheck(variant, free_port()) != 0
