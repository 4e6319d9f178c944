"""gunicorn's gthread worker, changed only in how it stops (``worker_class`` in gunicorn.conf.py).

A stopping gthread worker stops accepting but keeps its copy of the listening socket open
until its last request is answered. When the whole server is stopping, the master has
already closed its copy, so nobody will ever accept a connection made in that window: the
kernel still completes the handshake and the client waits, for up to the graceful timeout,
before it is reset. Closing the worker's copy as soon as it stops accepting makes such
connections fail at once with "connection refused", which a client or a load balancer
retries elsewhere. While the server runs on (a recycled worker, a reload) the master and the
other workers still hold the socket, so nothing changes for new connections.
"""

from __future__ import annotations

from gunicorn.workers.gthread import ThreadWorker


class StoppingThreadWorker(ThreadWorker):
    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        # Busy workers also stop accepting for a while; only a stopping one lets go.
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.close()
