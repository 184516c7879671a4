"""The API against its own OpenAPI document, with schemathesis, through a real server on real Redis:
every operation with generated valid and invalid input (bounded), then stateful sequences along the
document's links (create a sale, reserve, pay, read, cancel, fulfil). Zero server errors and zero
conformance failures (status codes, content types, response schemas and headers, 405s with ``Allow``,
refused bad input, accepted good input, auth), except where this file says why, each exception tested.

The exceptions, all "valid input refused" (schemathesis's positive_data_acceptance), none a 5xx:

- ``paymentMethod``: the gateway decides which methods it takes (``PaymentGateway.accepts``), so the
  document cannot list them; generated bodies pay with ``CREDIT_CARD`` here, and an unknown method's
  400 is tests/api/test_orders.py::test_an_unknown_payment_method_is_refused_before_anything_changes.
- 400 ``OUT_OF_STOCK`` and ``INVALID_QUANTITY`` on a well-formed request: refusals of the sale's *state*
  (stock, the per-user limit, units already reserved or sold), with the design document's status 400
  (tests/api/test_reservations.py, tests/api/test_admin.py).
- 400 ``INVALID_ARGUMENT`` "ends_at must be after starts_at": a rule between two fields, which JSON
  Schema cannot state (tests/api/test_admin.py::
  test_an_admin_creates_a_sale_changes_it_restocks_and_pauses_it).
- 400 ``INVALID_ARGUMENT`` "the waiting room must open before the sale starts": the room's ``opensAt``
  against the sale's start, another rule between two values (tests/api/test_waiting_room.py::
  test_bad_waiting_room_requests_are_refused_and_change_nothing).
- 400 ``INVALID_ARGUMENT`` "name must be 1-200 bytes": the Struct counts characters, the script bytes
  (lua/load_sale.lua); test_a_sale_name_over_200_bytes_is_the_one_length_rule_the_document_cannot_state.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest
import redis
import schemathesis
from flashsale.api import openapi
from flashsale.api.routes import ENDPOINTS
from flashsale.engine import Sale
from flashsale.engine.keys import ENTITY_ID, Keyspace, new_order_id, new_reservation_id
from flashsale.engine.settings import Settings
from hypothesis import HealthCheck, Phase, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from flashsale.commands.token import mint
from tests.api.conftest import SECRET, SKU, ApiServer
from tests.api.test_reservations import V1, assert_error

schema = schemathesis.openapi.from_dict(openapi.build(ENDPOINTS))

STATELESS = settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
# No shrinking: a sequence's outcome depends on Redis's state and the clock, so a replay may take
# another path. A failure prints its whole sequence, which is enough to reproduce it by hand.
STATEFUL = settings(
    max_examples=30,
    stateful_step_count=10,
    deadline=None,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)

_IDENTIFIER = re.compile(openapi.PATH_PARAMETERS["skuId"]["pattern"])
STATE_REFUSALS = {"OUT_OF_STOCK", "INVALID_QUANTITY"}
RULES_BEYOND_JSON_SCHEMA = (
    "ends_at must be after starts_at",
    "name must be 1-200 bytes",
    "the waiting room must open before the sale starts",
)


def _documented_refusal(response: Any) -> bool:
    if response.status_code != 400:
        return False
    try:
        error = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return False
    if error.get("error") in STATE_REFUSALS:
        return True
    return error.get("error") == "INVALID_ARGUMENT" and error.get("message") in RULES_BEYOND_JSON_SCHEMA


@schemathesis.check
def positive_data_acceptance_but_documented_refusals(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """schemathesis's positive_data_acceptance, less the refusals listed in this module's docstring."""
    if _documented_refusal(response):
        return None
    return positive_data_acceptance(ctx, response, case)


CHECKS: dict[str, Any] = {
    "excluded_checks": [positive_data_acceptance],
    "additional_checks": [positive_data_acceptance_but_documented_refusals],
}


@schema.auth(refresh_interval=None)
class Bearer:
    """One user, "ops", with a shopper token on shopper routes and an admin token on admin routes (its
    reservations and orders are its own whichever route acts on them). Given to schemathesis as auth,
    not as a plain header, so that the cases that drop the token to test a 401 stay without one."""

    def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str:
        admin = case.operation.path.startswith(f"{V1}/admin/")
        return mint(Settings(jwt_secret=SECRET), "ops", admin=admin)

    def set(self, case: schemathesis.Case, data: str, context: schemathesis.AuthContext) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def _pay_with_a_method_the_gateway_takes(case: schemathesis.Case) -> None:
    body = case.body
    method = body.get("paymentMethod") if isinstance(body, dict) else None
    if isinstance(method, str) and 1 <= len(method) <= 64:  # a valid one; an invalid one stays
        body["paymentMethod"] = "CREDIT_CARD"


def _shop_the_sale_on_offer(case: schemathesis.Case) -> None:
    """Sequences start on the SKU that is on sale: a random SKU ends every sequence at "no such SKU"
    (arbitrary SKUs are the stateless test's). A malformed SKU, the point of an invalid case, stays."""
    parameters = case.path_parameters or {}
    if _IDENTIFIER.fullmatch(str(parameters.get("skuId", ""))):
        parameters["skuId"] = SKU
    body = case.body
    if isinstance(body, dict) and _IDENTIFIER.fullmatch(str(body.get("skuId", ""))):
        body["skuId"] = SKU


@pytest.fixture
def put_on_sale(load_sale: Callable[..., Sale]) -> Callable[[], Sale]:
    """Puts the document's example SKU on sale, so generated calls reach past "no such SKU"."""
    return lambda: load_sale(SKU, total=1_000_000_000, per_user_limit=1_000_000)


@pytest.fixture
def on_sale(put_on_sale: Callable[[], Sale]) -> Sale:
    return put_on_sale()


@schema.parametrize()
@STATELESS
def test_every_operation_conforms_to_the_document(
    case: schemathesis.Case, api: ApiServer, on_sale: Sale
) -> None:
    _pay_with_a_method_the_gateway_takes(case)
    case.call_and_validate(base_url=api.url, **CHECKS)


def test_sequences_along_the_documents_links_conform_to_it(
    api: ApiServer, store: redis.Redis, put_on_sale: Callable[[], Sale]
) -> None:
    assert openapi.LINKS, "no links: the stateful test would have nothing to walk"

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:  # each sequence starts from the same state: one sale, nothing else
            store.flushall()
            put_on_sale()

        def before_call(self, case: schemathesis.Case) -> None:
            _pay_with_a_method_the_gateway_takes(case)
            _shop_the_sale_on_offer(case)

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": api.url}

        def validate_response(
            self, response: schemathesis.Response, case: schemathesis.Case, **kwargs: Any
        ) -> None:
            case.validate_response(response, transport_kwargs=kwargs, **CHECKS)

    Workflow.run(settings=STATEFUL)


def test_a_sale_name_over_200_bytes_is_the_one_length_rule_the_document_cannot_state(
    api: ApiServer, http: httpx.Client
) -> None:
    admin = api.auth("ops", admin=True)
    name = "é" * 101  # 101 characters (the Struct allows 200), 202 bytes (the script allows 200)
    refused = http.put(f"{V1}/admin/sales/SKU-NAMED", json={"name": name, "total": 1}, headers=admin)
    assert assert_error(refused, 400, "INVALID_ARGUMENT")["message"] in RULES_BEYOND_JSON_SCHEMA
    accepted = http.put(f"{V1}/admin/sales/SKU-NAMED", json={"name": "é" * 100, "total": 1}, headers=admin)
    assert accepted.status_code == 200, accepted.text


def test_the_documents_id_patterns_are_the_engines_id_rule() -> None:
    keys = Keyspace()
    minted = [new_reservation_id(keys.partition(15)), new_order_id(keys.partition(0))]
    for text in [
        *minted,
        "rsv_0_a",
        "ord_99999_Z9",
        "rsv_²_x",
        "rsv_01_a",
        "rsv_1_",
        "rsv_1_a-b",
        "ord_1_a\n",
    ]:
        for kind, parameter in (("rsv", "reservationId"), ("ord", "orderId")):
            # ECMA-262's ^...$ (JSON Schema's regexes) is Python's fullmatch: its $ takes no final newline.
            pattern = openapi.PATH_PARAMETERS[parameter]["pattern"].removeprefix("^").removesuffix("$")
            engine_takes = ENTITY_ID.fullmatch(text) is not None and text.startswith(f"{kind}_")
            assert (re.fullmatch(pattern, text) is not None) == engine_takes, (parameter, text)
