"""twinlm: masked and causal language models side by side on one Transformer backbone."""

__version__ = "0.1.0"
