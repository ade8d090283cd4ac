"""hft-bench: the evidence harness of hft-plugins, its own distribution.

``hft demo`` and ``hft bench`` (added to the ``hft`` command through the
``register_commands`` hook), the embedded tiny Llama with its character tokenizer,
shipped synthetic tasks and cached base model, the forgetting benchmark and the
step-time benchmark. Importing this package imports no framework; transformers, TRL,
PEFT and BAdam are imported by the functions that use them.
"""
