import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A Hub cache of the tests' own (set before huggingface_hub reads it): repos that tests put
# there (tests.helpers.hub_snapshot) load by id, offline, as from a real cache; removed
# when the run ends.
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="hft-tests-hub-")
atexit.register(shutil.rmtree, os.environ["HF_HUB_CACHE"], ignore_errors=True)


@pytest.fixture
def fresh_registry():
    """The plugin registry reset before and after the test: what it registers stays there."""
    from hft_plugins import registry

    registry.reset()
    yield
    registry.reset()
