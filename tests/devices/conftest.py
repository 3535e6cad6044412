"""The `device` fixture of tests/devices: "cpu", and "cuda" (skipped where no GPU is present)."""

import pytest
from tests.devices.guard import DEVICES


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param
