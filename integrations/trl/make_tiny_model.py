"""Write a tiny model and tokenizer directory to run the TRL script on, offline.

python integrations/trl/make_tiny_model.py /tmp/tiny-llama [--family llama]
(the same as ``python -m hft_plugins.testing /tmp/tiny-llama``)
"""

from hft_plugins.testing import main

raise SystemExit(main())
