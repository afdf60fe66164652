"""JSON responses and errors shared by the coordinator's HTTP APIs: bad input gets a 4xx
with a clear message, a database outage a 503, never a 500."""

import logging
from typing import Any

from pydantic import BaseModel, ValidationError
from quart import Blueprint, Response

from coordinator.errors import (
    Busy,
    Conflict,
    CoordinatorError,
    NotFound,
    RateLimited,
    StoreError,
)
from coordinator.mqtt.accounts import BrokerAdminError
from farm_protocol.chat import ErrorBody
from farm_protocol.errors import TopicError

log = logging.getLogger(__name__)


def json_response(model: BaseModel | list[Any], status: int = 200) -> Response:
    if isinstance(model, list):
        body = "[" + ",".join(m.model_dump_json() for m in model) + "]"
    else:
        body = model.model_dump_json()
    return Response(body, status=status, content_type="application/json")


def error(status: int, message: str, retry_after_s: float | None = None) -> Response:
    response = json_response(ErrorBody(error=message, retry_after_s=retry_after_s), status)
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
            case Conflict():
                return error(409, str(exc))
            case Busy():
                return error(503, str(exc), exc.retry_after_s)
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
