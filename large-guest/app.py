"""A wasi:http/proxy handler in Python: GET /healthz answers 200 `ok`, any
other request 404.

componentize-py compiles it, with CPython and its standard library, into a
component of about 18 MB: the benchmark's large component (see README.md).
"""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Get,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        # The query, if any, does not change the route.
        path = (request.path_with_query() or "/").split("?", 1)[0]
        if isinstance(request.method(), Method_Get) and path == "/healthz":
            status, body = 200, b"ok\n"
        else:
            status, body = 404, b"not found\n"
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        response.set_status_code(status)
        response_body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        # The stream is a child of the body: it must be dropped (the `with`)
        # before the body is finished.
        with response_body.write() as stream:
            stream.blocking_write_and_flush(body)
        OutgoingBody.finish(response_body, None)
