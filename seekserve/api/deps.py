"""What a route takes from the app: the services container the app was built with."""

from __future__ import annotations

from starlette.requests import Request

from seekserve.api.admission import InFlightLimit
from seekserve.services import Services
from seekserve.tenancy.accounting import Accounting


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def accounting_of(request: Request) -> Accounting:
    """The running app's accounting (it exists from start-up to shutdown)."""
    accounting = services_of(request).accounting
    assert accounting is not None, "requests are served only while the app runs"
    return accounting


def inflight_of(request: Request) -> InFlightLimit:
    inflight: InFlightLimit = request.app.state.inflight
    return inflight
