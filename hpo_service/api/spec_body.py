"""A request body as a search spec: JSON, or YAML by its content type. Whatever is wrong with it (malformed,
beyond the bounds of plain data, not an object, an invalid field) is a 422 that names where, like FastAPI's
own validation errors. Parsing runs in a worker thread, so that other requests are served meanwhile."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from hpo_service.api.plain_data import BodyError, load_json, load_yaml
from hpo_service.spec import SearchSpec

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def parse_spec(body: bytes, content_type: str) -> SearchSpec:
    is_yaml = content_type.split(";")[0].strip().lower() in YAML_TYPES
    try:
        data = load_yaml(body) if is_yaml else load_json(body)
    except BodyError as exc:
        raise RequestValidationError([{"type": "body", "loc": ("body", *exc.loc), "msg": exc.message}]) from None
    if not isinstance(data, dict):
        raise RequestValidationError([{"type": "dict_type", "loc": ("body",), "msg": "the spec must be an object"}])
    try:
        return SearchSpec.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
        raise RequestValidationError(errors) from None


async def spec_from_body(request: Request) -> SearchSpec:
    return await run_in_threadpool(parse_spec, await request.body(), request.headers.get("content-type", ""))


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema with its ``$defs`` written in place of their references (the spec's models do not
    recurse), so that it stands alone in an OpenAPI request body."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rpartition("/")[2]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


OPENAPI = {  # the body is read by hand (to take YAML too), so its schema is stated here
    "requestBody": {
        "required": True,
        "description": "A search spec, as JSON or as YAML (Content-Type: application/yaml).",
        "content": {
            "application/json": {
                "schema": inline_refs(SearchSpec.model_json_schema()),
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

SpecBody = Annotated[SearchSpec, Depends(spec_from_body)]  # a route that takes it declares OPENAPI
