#!/usr/bin/env bash
# Validates openapi.yaml (OpenAPI 3.1) with openapi-spec-validator.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! python3 -c 'import openapi_spec_validator' >/dev/null 2>&1; then
    python3 -m pip install --quiet openapi-spec-validator
fi

python3 -m openapi_spec_validator openapi.yaml
