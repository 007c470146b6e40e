"""Compatibility: the model-directory functions moved to services/common/model_dir.py and model
fetching to services/cli/model_fetch.py. Nothing in the repository imports this module any more
(services/cli/bench/ imports model_dir); remove it once no outside script does."""

from services.common.model_dir import ModelNotFoundError, default_models_dir, resolve_model_dir  # noqa: F401
