"""The forgetting benchmark on a real chat model (``hft bench forgetting``).

The toy evidence's method (``hft_bench.evidence``: each method's envelope over an
lr x steps grid, forgetting read at matched learning, 95% intervals over seeds) on a
pretrained chat model, SmolLM2-135M-Instruct by default, with metrics that mean something
for it (``probes``): behaviour drift from the base's own answers, whether it still ends its
turn, world facts and held-out text; learning is a new task's NLL on held-out items.
"""
