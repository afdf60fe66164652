"""The webapp's own JSON errors (the OpenAI API has its shape: webapp.openai_api)."""

import json

from quart import Response


def json_error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status=status, content_type="application/json")
