"""The chat's pages and static files, served from memory.

Quart's ``send_from_directory`` opens the file through aiofiles, in a thread, on every
request. A browser that goes away while that open runs cancels the request, and the file
the thread opened is left to the garbage collector ("unclosed file
webapp/static/index.html", seen in the suite when clients hung up mid-request). These
files are a few hundred KB in all, so each is read once, and again only when it changes
on disk (an edit in dev mode shows on the next load). Responses keep what
``send_from_directory`` gave: the type, ``Last-Modified``, an ``ETag`` (here from the
content), ``Cache-Control: public``, and 304 and range answers."""

import hashlib
import mimetypes
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from quart import Response, request

DEFAULT_TYPE = "application/octet-stream"


@dataclass(slots=True)
class StaticFile:
    path: Path
    mimetype: str
    data: bytes = b""
    etag: str = ""
    modified_ns: int = -1
    size: int = -1

    def fresh(self) -> None:
        """Read the file again if it changed on disk (its time or size) since it was
        last read."""
        stat = self.path.stat()
        if (stat.st_mtime_ns, stat.st_size) != (self.modified_ns, self.size):
            self.data = self.path.read_bytes()
            self.etag = hashlib.sha256(self.data).hexdigest()[:32]
            self.modified_ns, self.size = stat.st_mtime_ns, stat.st_size


class StaticFiles:
    """The files of ``directory`` (not its subfolders), by name; no other name is ever
    looked up on disk."""

    def __init__(self, directory: Path) -> None:
        self.files = {
            path.name: StaticFile(path, mimetypes.guess_type(path.name)[0] or DEFAULT_TYPE)
            for path in directory.iterdir()
            if path.is_file()
        }

    def __contains__(self, name: str) -> bool:
        return name in self.files

    async def response(self, name: str) -> Response:
        """The file ``name`` (one of :attr:`files`) as the answer to this request."""
        file = self.files[name]
        file.fresh()
        response = Response(file.data, mimetype=file.mimetype)
        response.cache_control.public = True
        response.last_modified = datetime.fromtimestamp(file.modified_ns / 1e9, UTC)
        response.set_etag(file.etag)
        await response.make_conditional(request, accept_ranges=True, complete_length=len(file.data))
        return response
