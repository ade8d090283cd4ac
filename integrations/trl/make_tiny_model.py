"""Write a tiny model and tokenizer directory to run the TRL script on, offline.

python integrations/trl/make_tiny_model.py /tmp/tiny-llama [--family llama]
"""

import argparse

from hft_plugins.tiny import FAMILIES, save_tiny

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("path")
parser.add_argument("--family", default="llama", choices=FAMILIES)
parser.add_argument("--seed", type=int, default=0)
options = parser.parse_args()
save_tiny(options.path, options.family, options.seed)
print(f"tiny {options.family} model and tokenizer written to {options.path}")
