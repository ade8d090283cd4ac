"""The model card of an HFT model: the ``hft`` tag and a section on the half one stage trained.

Written by the Trainer adapters (``create_model_card``) and by ``HFTModel.save_pretrained``;
huggingface_hub is imported inside :func:`hft_model_card`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..core.mask import HFTMask

PAPER_URL = "https://arxiv.org/abs/2404.18466"
HFT_TAG = "hft"
_CARD_HEADING = "## Half Fine-Tuning (HFT)"


def hft_card_section(mask: HFTMask) -> str:
    """The model card's HFT section: the draw and the trainable fraction, with the paper."""
    c = mask.config
    done, total = mask.fractions()["total"]
    return (
        f"{_CARD_HEADING}\n\n"
        f"Fine-tuned with [Half Fine-Tuning]({PAPER_URL}) (hft-plugins): this stage trained a "
        "drawn half of every transformer block and left the other half exactly as it was.\n\n"
        "| strategy | ratio | seed | stage | trainable fraction |\n"
        "|---|---|---|---|---|\n"
        f"| {c.strategy} | {c.ratio} | {c.seed} | {c.stage} | {done / total:.4f} "
        f"({done:,} of {total:,} parameters) |\n"
    )


def hft_model_card(
    existing: str | None, mask: HFTMask, base_model: str | None = None, tags: Iterable[str] = ()
) -> str:
    """``existing`` model card text (or a new card) with the ``hft`` tag and the HFT section.

    What the card held stays; an HFT section from an earlier stage is replaced.
    """
    from huggingface_hub import ModelCard

    text = existing or "# Model card\n"
    card = ModelCard(text if text.lstrip().startswith("---") else "---\n{}\n---\n" + text)
    card.data.tags = list(dict.fromkeys([*(card.data.tags or []), *tags, HFT_TAG]))
    if base_model and not os.path.isdir(base_model) and not card.data.get("base_model"):
        card.data.base_model = base_model
    body = card.text
    start = body.find(_CARD_HEADING)
    if start >= 0:
        end = body.find("\n## ", start + len(_CARD_HEADING))
        body = body[:start].rstrip() + ("\n\n" + body[end + 1 :] if end >= 0 else "")
    card.text = body.rstrip() + "\n\n" + hft_card_section(mask)
    return str(card)
