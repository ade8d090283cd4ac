"""Evidence benchmark: at the same amount of new learning, does HFT forget less?

A small Llama pretrained on WordNet glosses (Debian ``wordnet-base``) is fine-tuned on
new domains by FFT, HFT (category/layer/matrix), LoRA, BAdam and FFT with 1% replay;
forgetting (base-knowledge NLL increase) is compared at matched learning (new-task NLL
decrease). ``run_demo`` is the short version; ``python -m hft_bench.evidence`` the full one.
"""

from .demo import run_demo

__all__ = ["run_demo"]
