"""Where the services find their models: one models directory, one rule per model.

``SEARCH_MODELS_DIR`` (default ``~/.cache/search-platform/models``) holds one folder per
model (``model.onnx`` + ``tokenizer.json``); a service setting (``*_MODEL_DIR``) names another
folder. Fetching models is the CLI's job (services/cli/model_fetch.py, ``searchctl models fetch``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "BI_ENCODER",
    "CROSS_ENCODER",
    "LATE_INTERACTION",
    "MODELS_DIR_ENV",
    "ModelNotFoundError",
    "default_models_dir",
    "model_dir",
    "resolve_model_dir",
]

MODELS_DIR_ENV = "SEARCH_MODELS_DIR"
REQUIRED_FILES = ("model.onnx", "tokenizer.json")

#: The models' folder names under the models directory (also their public names).
BI_ENCODER = "bge-small-en"
CROSS_ENCODER = "ms-marco-MiniLM-L-12-v2"
LATE_INTERACTION = "answerai-colbert-small-v1"


class ModelNotFoundError(FileNotFoundError):
    """A model directory is missing or incomplete."""


def default_models_dir() -> Path:
    """``$SEARCH_MODELS_DIR`` if set, else ``~/.cache/search-platform/models``."""
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "search-platform" / "models"


def resolve_model_dir(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as an absolute Path after checking it holds a usable model.

    Raises:
        ModelNotFoundError: the directory, ``model.onnx`` or ``tokenizer.json`` is
            missing. The message tells the user how to fix it.
    """
    model_dir = Path(path).expanduser()
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        what = "does not exist" if not model_dir.is_dir() else f"lacks {', '.join(missing)}"
        raise ModelNotFoundError(
            f"model directory {model_dir} {what}. Run `searchctl models fetch` to download "
            f"the models (into ${MODELS_DIR_ENV}, default {default_models_dir()}), or point "
            f"${MODELS_DIR_ENV} / the service's *_MODEL_DIR variable at a directory holding "
            f"model.onnx and tokenizer.json."
        )
    return model_dir.resolve()


def model_dir(configured: str | os.PathLike[str] | None, name: str) -> Path:
    """The one model-directory rule: the configured folder, else ``<models dir>/<name>``,
    checked to hold a usable model (:func:`resolve_model_dir`)."""
    return resolve_model_dir(configured or default_models_dir() / name)
