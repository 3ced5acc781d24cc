"""A request body as a search spec: JSON, or YAML by its content type. Whatever is wrong with it (malformed,
not an object, an invalid field) is a 422 that names where, like FastAPI's own validation errors."""

from __future__ import annotations

import json
from typing import Annotated

import yaml
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from hpo_service.spec import SearchSpec

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
OPENAPI = {  # the body is read by hand (to take YAML too), so its schema is stated here
    "requestBody": {
        "required": True,
        "description": "A search spec, as JSON or as YAML (Content-Type: application/yaml).",
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/SearchSpec"},
                "example": {
                    "name": "tiny-demo",
                    "model": {"width": 64, "depth": 2, "head_dim": 16, "seq_len": 64, "vocab_size": 256},
                    "training": {"batch_size": 16, "steps": 60, "warmup_steps": 6, "data": "builtin:python-stdlib"},
                    "search_space": {"modules": "all", "hps": ["lr", "init_std", "weight_decay"]},
                    "optimizer": {"name": "cma", "population": 6, "generations": 3, "seed": 0},
                    "execution": {"parallel": 2, "cpus_per_trial": 1, "max_retries": 1, "timeout_s": 600},
                },
            },
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


def parse_spec(body: bytes, content_type: str) -> SearchSpec:
    is_yaml = content_type.split(";")[0].strip().lower() in YAML_TYPES
    try:
        data = yaml.safe_load(body) if is_yaml else json.loads(body)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "YAML" if is_yaml else "JSON"
        message = f"malformed {kind}: {exc}".replace("\n", " ")
        raise RequestValidationError([{"type": "malformed", "loc": ("body",), "msg": message, "input": None}]) from None
    if not isinstance(data, dict):
        raise RequestValidationError([{"type": "dict_type", "loc": ("body",), "msg": "the spec must be an object"}])
    try:
        return SearchSpec.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
        raise RequestValidationError(errors) from None


async def spec_from_body(request: Request) -> SearchSpec:
    return parse_spec(await request.body(), request.headers.get("content-type", ""))


SpecBody = Annotated[SearchSpec, Depends(spec_from_body)]  # a route that takes it declares OPENAPI
