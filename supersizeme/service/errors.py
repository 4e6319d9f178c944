"""The one exception for work the service will not do, named by a stable code.

The code says what went wrong, not how a protocol reports it: the HTTP layer (api.py)
maps each code to a status and answers with a JSON body, and the batch CLI prints the
code beside the file's name. Neither the image layer nor the served path knows HTTP.
"""

from __future__ import annotations

from typing import Any


class Refused(Exception):
    """A request (or, in the CLI, a file) that is not processed.

    ``code`` is a stable snake_case identifier and ``message`` a sentence for the client
    that names the limit or problem. Messages never include exception text, paths or
    tracebacks; the cause, when there is one, is chained as ``__cause__`` for server-side
    logs. ``retry_after`` is the seconds after which the same request may succeed, for
    refusals that are not the caller's fault; ``extra`` adds fields to the answer, such as
    the values a bad parameter may take.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retry_after: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.extra = extra


class UploadTimedOut(Exception):
    """A request body did not arrive within the upload time limit (``SSM_UPLOAD_SECONDS``).

    Raised by the server's body reader (supersizeme/service/worker.py), which counts the
    limit from the end of the request's headers. Not an OSError, so that no reader on the
    way (Werkzeug's) takes it for a client that hung up.
    """
