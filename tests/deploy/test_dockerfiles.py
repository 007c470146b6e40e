"""services/Dockerfile: one target per image, multi-stage, pinned bases, non-root, the services'
ports and commands, each service's dependency group, models fetched at build time, CPU vs CUDA
ONNX Runtime; hadolint clean; .dockerignore keeps the context to what `pip install .` needs. The
HEALTHCHECK one-liners are executed here against real gRPC health servers. No image is built (no
container engine here).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import zipfile
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

DOCKERFILE = REPO / "services" / "Dockerfile"
#: Image target -> the dependency group it installs.
TARGETS = {"gateway": "gateway", "retrieval": "retrieval", "reranker": "reranker", "reranker-cuda": "reranker"}
MODEL_OF = {"retrieval": "bge-small-en", "reranker": "ms-marco-MiniLM-L-12-v2"}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [args for o, args in self.instructions if o == op]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def resolve(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: self.args.get(m.group(1), m.group(0)), text)

    def chain(self, name: str) -> list[Stage]:
        """The stages an image is built on, its base first."""
        names = {s.name for s in self.stages}
        out = [self.stage(name)]
        while out[0].base in names:
            out.insert(0, self.stage(out[0].base))
        return out

    def image(self, target: str) -> Stage:
        """A target as its image: every instruction of its chain, the base's first."""
        chain = self.chain(target)
        return Stage(chain[0].base, target, [i for s in chain for i in s.instructions])


def env_of(stage: Stage) -> dict[str, str]:
    out: dict[str, str] = {}
    for args in stage.all("ENV"):
        for token in shlex.split(args):
            key, _, value = token.partition("=")
            out[key] = value
    return out


def parse(path: Path = DOCKERFILE) -> Dockerfile:
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


def service_of(target: str) -> str:
    return target.split("-")[0]


def onnxruntime_pin() -> str:
    groups = PYPROJECT["project"]["optional-dependencies"]
    (req,) = [d for group in groups.values() for d in group if d.startswith("onnxruntime-gpu")]
    return req.split("==")[1]


# --------------------------------------------------------------------------- structure
def test_one_dockerfile_builds_every_image():
    """The images share their stages instead of repeating them: no other Dockerfile in services/."""
    others = [p.relative_to(REPO).as_posix() for p in (REPO / "services").rglob("Dockerfile*") if p != DOCKERFILE]
    assert not others, f"services/Dockerfile has a target per image; move {others} into it"
    names = [s.name for s in parse().stages]
    assert len(names) == len(set(names)) and set(TARGETS) <= set(names), names


@pytest.mark.parametrize("target", TARGETS)
def test_multi_stage_with_pinned_bases(target):
    df = parse()
    chain = df.chain(target)
    assert len(chain) >= 2 and chain[-1].name == target
    stages = {s.name for s in df.stages}
    for stage in df.stages:
        base = df.resolve(stage.base)
        if base in stages:
            continue  # FROM an earlier stage
        if stage.base == "${CUDA_IMAGE}":
            assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.\d\d", base), base
        else:
            assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base), base
    assert chain[0].base == ("${CUDA_IMAGE}" if target.endswith("cuda") else "${PYTHON_IMAGE}")


def test_cuda_base_matches_the_pinned_onnxruntime_gpu():
    """onnxruntime-gpu is built against one CUDA major.minor; the runtime image must ship it."""
    ort = pytest.importorskip("onnxruntime")
    info = pytest.importorskip("onnxruntime.capi.build_and_package_info")
    if getattr(info, "package_name", "") != "onnxruntime-gpu" or ort.__version__ != onnxruntime_pin():
        pytest.skip(f"installed onnxruntime is not onnxruntime-gpu=={onnxruntime_pin()}")
    df = parse()
    base = df.resolve(df.chain("reranker-cuda")[0].base)
    assert base.startswith(f"nvidia/cuda:{info.cuda_version}."), (base, info.cuda_version)


@pytest.mark.parametrize("target", TARGETS)
def test_runtime_stage_runs_the_service_unprivileged(target):
    service = service_of(target)
    image = parse().image(target)
    user = image.all("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user
    assert json.loads(image.all("ENTRYPOINT")[-1]) == ["searchctl", "serve", service]
    expose = image.all("EXPOSE")[-1]
    assert {int(p) for p in expose.split()} == {GRPC_PORTS[service], METRICS_PORTS[service]}
    env = env_of(image)
    prefix = service.upper()
    assert env["SEARCH_SERVICE"] == service
    assert env[f"{prefix}_PORT"] == str(GRPC_PORTS[service])
    assert env[f"{prefix}_METRICS_PORT"] == str(METRICS_PORTS[service])
    assert env[f"{prefix}_HOST"] == "0.0.0.0"
    assert env["PATH"].startswith("/opt/venv/bin")
    assert f"--from={target}-build /opt/venv /opt/venv" in parse().stage(target).all("COPY")


@pytest.mark.parametrize("target", TARGETS)
def test_build_installs_the_project_and_its_group(target):
    df = parse()
    project = df.stage("project")
    copied = {src for c in project.all("COPY") for src in c.split()[:-1]}
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
    build = df.image(f"{target}-build")
    assert "project" in [s.name for s in df.chain(f"{target}-build")] or "--from=project /src /src" in build.all("COPY")
    runs = " ".join(build.all("RUN"))
    assert f'pip install ".[{TARGETS[target]}]"' in runs
    if target.endswith("cuda"):
        assert "onnxruntime-gpu" not in runs  # keeps the group's onnxruntime-gpu
        assert "CUDAExecutionProvider" in runs
        assert env_of(df.image(target))["ORT_PROVIDER"] == "cuda"
    elif target == "gateway":
        assert "onnxruntime" not in runs
    else:
        # CPU images swap in the CPU build of exactly the pinned version.
        assert 'pip uninstall -y onnxruntime-gpu && pip install "${ORT_CPU_PACKAGE}"' in runs
        assert "ORT_CPU_PACKAGE" in build.all("ARG")
        assert df.args["ORT_CPU_PACKAGE"] == f"onnxruntime=={onnxruntime_pin()}"
        assert env_of(df.image(target))["ORT_PROVIDER"] == "cpu"


def models_stage(df: Dockerfile, target: str) -> Stage | None:
    sources = [c.split()[0].removeprefix("--from=") for c in df.stage(target).all("COPY") if c.endswith("/models /models")]
    return df.stage(sources[0]) if sources else None


@pytest.mark.parametrize("target", [t for t in TARGETS if t != "gateway"])
def test_models_are_fetched_at_build_time(target):
    service = service_of(target)
    df = parse()
    models = models_stage(df, target)
    assert models is not None and "FETCH_MODELS=1" in models.all("ARG")
    run = " ".join(models.all("RUN"))
    keep = MODEL_OF[service]
    # every fetch names the image's one model
    fetches = re.findall(r"searchctl models fetch --models-dir /models([^&;]*)", run)
    assert fetches and all(f"--only {keep}" in f for f in fetches), fetches
    assert env_of(df.image(target))["SEARCH_MODELS_DIR"] == "/models"


def test_gateway_image_carries_no_models():
    df = parse()
    assert models_stage(df, "gateway") is None
    assert "SEARCH_MODELS_DIR" not in env_of(df.image("gateway"))


def test_hadolint_is_clean():
    hadolint = xds_tool("hadolint")
    proc = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
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


def test_the_package_built_from_that_context_carries_the_stubs_and_the_documented_contracts(tmp_path):
    """`pip install .` (every image) installs gen/'s stubs and contracts.binpb, which reflection
    serves with the comments (services/common/reflection.py; without it, reflection loses them)."""
    source = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info beside pyproject.toml
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for tree in ("gen", "services"):
        shutil.copytree(REPO / tree, source / tree, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                            "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    if built.returncode != 0 and "No module named" in built.stderr:
        pytest.skip(f"cannot build a wheel here: {built.stderr.strip().splitlines()[-1]}")
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"search/v1/contracts.binpb", "search/v1/search_service_pb2.py", "services/common/reflection.py"} <= names


# --------------------------------------------------------------------------- HEALTHCHECK, executed
def healthcheck_argv(target: str) -> list[str]:
    hc = parse().image(target).all("HEALTHCHECK")[-1]
    options, _, cmd = hc.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options and "--start-period=" in options
    argv = json.loads(cmd)
    assert argv[:2] == ["python", "-c"], "exec form, no shell"
    assert "grpc_health.v1" in argv[2]
    assert "os.environ[os.environ['SEARCH_SERVICE'].upper()+'_PORT']" in argv[2]
    return [sys.executable, *argv[1:]]


def run_healthcheck(target: str, port: int) -> int:
    env = dict(os.environ)
    env["SEARCH_SERVICE"] = env_of(parse().image(target))["SEARCH_SERVICE"]
    env[f"{service_of(target).upper()}_PORT"] = str(port)
    return subprocess.run(healthcheck_argv(target), env=env, capture_output=True, timeout=30).returncode


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


@pytest.mark.parametrize("target", TARGETS)
def test_healthcheck_passes_when_serving(target, serving_gateway):
    assert run_healthcheck(target, serving_gateway) == 0


@pytest.mark.parametrize("target", TARGETS)
def test_healthcheck_fails_when_not_serving(target, not_serving_port):
    assert run_healthcheck(target, not_serving_port) == 1


@pytest.mark.parametrize("target", ["gateway", "reranker-cuda"])
def test_healthcheck_fails_when_nothing_listens(target):
    assert run_healthcheck(target, free_port()) != 0
