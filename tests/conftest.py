import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", max_examples=60, deadline=None)
settings.register_profile("nightly", max_examples=1000, deadline=None)
settings.load_profile("nightly" if os.environ.get("FP4REF_SLOW") == "1" else "ci")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("FP4REF_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="long sweep: set FP4REF_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # Two cores here and in CI: oversubscribed threads make everything slower.
    torch.set_num_threads(int(os.environ.get("FP4REF_THREADS", "2")))
