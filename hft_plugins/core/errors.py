"""The one exception type hft-plugins raises for bad input."""


class HFTError(ValueError):
    """A bad input: the message is one line that names the problem."""
