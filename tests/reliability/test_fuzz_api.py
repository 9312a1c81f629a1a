"""API fuzzing: schemathesis generates requests from the service's own /openapi.json (query values,
multipart bodies, headers, wrong types, edge cases) against a real process; none may get a 5xx.

The fake model keeps each generated case cheap; the HTTP surface (routing, validation, multipart
parsing, error mapping) is the same as with TransXNet. schemathesis 4's pytest plugin
(`schema.parametrize()`) breaks under pytest 9 (`'Function' object has no attribute '_nodeid'`), so
the operations' Hypothesis strategies (`APIOperation.as_strategy`, the v4 Python API) are driven with
`hypothesis.given` directly, positive and negative modes, a bounded number of examples each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.support.processes import service_process

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 50
#: Operations that must be in the schema (and so fuzzed); others (e.g. /v2) are fuzzed as found.
REQUIRED = [("POST", "/classify"), ("POST", "/features"), ("GET", "/readyz"), ("GET", "/v1/models")]

#: Cases sent per operation and mode, reported by the last test of the module.
GENERATED: Counter[str] = Counter()


@pytest.fixture(scope="module")
def api_schema(reliability_fake_model) -> Iterator[schemathesis.schemas.BaseSchema]:
    with service_process(
        reliability_fake_model, max_batch_size="4", max_batch_delay_ms="1", max_image_bytes="200000"
    ) as service:
        yield schemathesis.openapi.from_url(service.url("/openapi.json"))


def fuzz_operation(operation, mode: GenerationMode) -> None:
    """Up to MAX_EXAMPLES generated requests for one operation; any 5xx or non-JSON error fails."""
    label = f"{operation.method.upper()} {operation.path} {mode.value}"

    @settings(
        max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case) -> None:
        GENERATED[label] += 1
        response = case.call(timeout=30)
        case.validate_response(response, checks=[not_a_server_error])
        if response.status_code >= 400 and not operation.path.startswith("/v2"):
            # Every error of our own API, generated or not, comes in the service's one error shape.
            assert set(response.json()) == {"error"}, response.text

    fuzz()


def test_every_operation_in_the_schema_survives_generated_valid_requests(api_schema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    listed = {(operation.method.upper(), operation.path) for operation in operations}
    assert set(REQUIRED) <= listed
    for operation in operations:
        fuzz_operation(operation, GenerationMode.POSITIVE)


def test_every_operation_with_inputs_survives_generated_invalid_requests(api_schema) -> None:
    for result in api_schema.get_all_operations():
        operation = result.ok()
        try:
            fuzz_operation(operation, GenerationMode.NEGATIVE)
        except Unsatisfiable:
            # Nothing invalid can be built (no parameters and no body, or only unconstrained strings in
            # the path): the positive run covered it. /classify and /features are checked below.
            continue


def test_the_fuzzer_sent_cases_to_every_required_operation() -> None:
    print(f"\nschemathesis cases: {sum(GENERATED.values())} in all, {dict(GENERATED)}")
    for method, path in REQUIRED:
        assert GENERATED[f"{method} {path} positive"] > 0
    assert GENERATED["POST /classify negative"] > 0
    assert GENERATED["POST /features negative"] > 0
