"""Compatibility: the model-directory functions moved to services/common/model_dir.py and model
fetching to services/cli/model_fetch.py. Kept only for services/cli/bench.py (issue 13 owns it
at this writing); new code imports model_dir. Remove once nothing imports this module."""

from services.common.model_dir import ModelNotFoundError, default_models_dir, resolve_model_dir  # noqa: F401
