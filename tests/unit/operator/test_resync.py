"""MEDIADRIVE_OPERATOR_RESYNC: how often the operator reconciles every resource again."""

from __future__ import annotations

import pytest

from mediadrive.operator.resync import ENV, resync_seconds


def test_the_default_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert resync_seconds(20.0) == 20.0
    monkeypatch.setenv(ENV, " ")
    assert resync_seconds(20.0) == 20.0


def test_seconds_from_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "2.5")
    assert resync_seconds(20.0) == 2.5


@pytest.mark.parametrize("value", ["soon", "0", "-3"])
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(ENV, value)
    with pytest.raises(ValueError, match=ENV):
        resync_seconds(20.0)
