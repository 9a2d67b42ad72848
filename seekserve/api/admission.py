"""The gateway's own bound on requests in flight: past it a request is refused at once (503
server_overloaded with Retry-After) instead of queueing without limit in this process."""

from __future__ import annotations

from seekserve.protocol.errors import ServerOverloadedError

RETRY_AFTER_S = 1


class InFlightLimit:
    """Counts the requests this process is serving (one event loop: no lock needed)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def enter(self) -> None:
        """Take a place, or raise ServerOverloadedError (503) when all are taken."""
        if self.in_flight >= self.limit:
            raise ServerOverloadedError(
                f"The server is overloaded: {self.in_flight} requests are in flight, the "
                f"limit of this server (server.max_in_flight); please retry after "
                f"{RETRY_AFTER_S} s.", headers={"Retry-After": str(RETRY_AFTER_S)})
        self.in_flight += 1

    def exit(self) -> None:
        self.in_flight -= 1
