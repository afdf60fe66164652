"""JSON responses and errors shared by the coordinator's HTTP APIs: bad input gets a 4xx
with a clear message, a database outage a 503, never a 500."""

import hmac
import json
import logging
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from quart import Blueprint, Response, request

from coordinator.errors import (
    Busy,
    Conflict,
    CoordinatorError,
    Forbidden,
    NotFound,
    RateLimited,
    StoreError,
)
from coordinator.mqtt.accounts import BrokerAdminError
from farm_protocol.chat import ErrorBody
from farm_protocol.errors import TopicError
from farm_runtime.http_serving import request_json

log = logging.getLogger(__name__)
T = TypeVar("T", bound=BaseModel)


def json_response(data: Any, status: int = 200) -> Response:
    """A model, a list of models, or plain JSON data (dicts, lists, numbers, strings)."""
    if isinstance(data, BaseModel):
        body = data.model_dump_json()
    elif isinstance(data, list) and data and all(isinstance(m, BaseModel) for m in data):
        body = "[" + ",".join(m.model_dump_json() for m in data) + "]"
    else:
        body = json.dumps(data)
    return Response(body, status=status, content_type="application/json")


async def read_body(model: type[T], *, empty_is_default: bool = False) -> T:
    """The request's JSON object body as ``model`` (a 400 names what is wrong). With
    ``empty_is_default`` an empty body means all of the model's defaults."""
    data = await request_json(request)
    if data is None and empty_is_default and not await request.get_data():
        data = {}
    if not isinstance(data, dict):
        raise ValueError("the request body must be a JSON object")
    return model.model_validate(data)


def bearer_token() -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ").strip()


def wrong_token(expected: str, what: str) -> Response | None:
    """A 401 unless the request carries ``expected`` as its bearer token (an empty
    ``expected`` lets no one in)."""
    if not expected or not hmac.compare_digest(bearer_token().encode(), expected.encode()):
        return error(401, f"missing or wrong {what}")
    return None


def error(
    status: int, message: str, retry_after_s: float | None = None, code: str | None = None
) -> Response:
    body = ErrorBody(error=message, retry_after_s=retry_after_s, code=code)
    response = json_response(body, status)
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, round(retry_after_s)))
    return response


def install_error_handlers(bp: Blueprint) -> None:
    @bp.errorhandler(ValidationError)
    async def _invalid(exc: ValidationError) -> Response:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(400, f"{where}: {first.get('msg')}" if where else str(first.get("msg")))

    @bp.errorhandler(ValueError)
    async def _bad_value(exc: ValueError) -> Response:
        return error(400, str(exc))

    @bp.errorhandler(CoordinatorError)
    async def _coordinator_error(exc: CoordinatorError) -> Response:
        match exc:
            case NotFound():
                return error(404, str(exc))
            case Forbidden():
                return error(403, str(exc))
            case Conflict():
                return error(409, str(exc))
            case Busy():
                return error(503, str(exc), exc.retry_after_s, exc.reason)
            case RateLimited():
                return error(429, str(exc), exc.retry_after_s)
            case BrokerAdminError():
                log.error("broker provisioning failed: %s", exc)
                return error(502, f"the broker's accounts could not be updated: {exc}", 30)
            case StoreError():
                log.error("store failure: %s", exc)
                return error(503, "the database is unavailable; try again shortly", 5)
        return error(400, str(exc))

    @bp.errorhandler(TopicError)
    async def _bad_id(exc: TopicError) -> Response:
        return error(404, str(exc))
