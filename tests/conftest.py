import os
import pathlib

import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def load_fixture(name):
    """A reference fixture as (state_dict, NHWC input, NHWC reference output)."""
    state = dict(np.load(FIXTURES / name))
    x = state.pop("__input__").transpose(0, 2, 3, 1)
    y = state.pop("__output__").transpose(0, 2, 3, 1)
    return state, x, y


@pytest.fixture
def fixture_loader():
    return load_fixture


def pytest_configure(config):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
