"""Put on PYTHONPATH of a CLI subprocess (with the repository root) so that it knows
the test-only ``memhold://`` storage-pod stand-in."""

import tests.integration.holding_store  # noqa: F401
