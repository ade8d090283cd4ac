"""The PEFT-style API: get_hft_model, print_trainable_parameters, half-size saves.

python examples/peft_style_save_load.py
"""

import os
import tempfile

import torch

from hft_plugins import HFTConfig, HFTModel, HFTOptimizer, get_hft_model
from hft_plugins.testing import tiny_model

model = get_hft_model(tiny_model("phi3"), HFTConfig(seed=0))  # phi3: fused qkv / gate_up
model.print_trainable_parameters()

# Train a few steps; HFTOptimizer keeps the frozen slices of fused tensors fixed.
ids = torch.randint(7, 90, (4, 16), generator=torch.Generator().manual_seed(0))
optimizer = HFTOptimizer(model.base_model, model.hft_mask, torch.optim.AdamW, lr=1e-3)
for _ in range(5):
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()

with tempfile.TemporaryDirectory() as out:
    model.save_pretrained(f"{out}/hft")
    model.base_model.save_pretrained(f"{out}/full")
    size = {d: sum(e.stat().st_size for e in os.scandir(f"{out}/{d}")) for d in ("hft", "full")}
    print(f"HFT save {size['hft']:,} bytes vs full save {size['full']:,} bytes")
    restored = HFTModel.from_pretrained(tiny_model("phi3"), f"{out}/hft")

same = all(
    torch.equal(a, b)
    for a, b in zip(model.base_model.parameters(), restored.base_model.parameters(), strict=True)
)
print(f"restored exactly: {same}")

tuned_loss = model(input_ids=ids, labels=ids).loss.item()
with model.disable_adapter():  # the base values of the trained half, no second model
    base_loss = model(input_ids=ids, labels=ids).loss.item()
print(f"loss tuned {tuned_loss:.4f}, with the adapter disabled (base) {base_loss:.4f}")
plain = model.merge_and_unload()
print(f"merge_and_unload -> {type(plain).__name__}")
