"""The tools the e2e tests call on the real model, shared by every API family's tests (each
wraps them in its own wire shape)."""

from __future__ import annotations

from typing import Any

WEATHER_DESCRIPTION = "Get the weather forecast for a city."
WEATHER_PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TIME_DESCRIPTION = "Get the local time in a city."
TIME_PARAMS: dict[str, Any] = {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}
CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Perth", "Quito", "Seoul", "Rome", "Dakar",
          "Hanoi", "Bern", "Riga", "Doha", "Accra", "Lyon", "Nice", "Kyiv", "Baku", "Suva"]
