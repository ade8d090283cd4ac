import pytest


@pytest.fixture(scope="session")
def quick_base(tmp_path_factory):
    """A cache dir holding a briefly trained base (30 steps): the real recipe, made short."""
    import torch
    from hft_bench import model

    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HFT_CACHE_DIR", str(tmp_path_factory.mktemp("hft-cache")))
        mp.setitem(model.BASE_RECIPE, "steps", 30)
        base = model.load_base()
        yield base
