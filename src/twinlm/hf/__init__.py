"""Hugging Face interoperability: import and export BERT, RoBERTa, DistilBERT, GPT-2 and Llama-style folders.

Layout, lowest layer first: ``names`` (one tensor-name table per family), ``configs`` (config.json <-> ModelConfig),
``files`` (reading a folder's config and weights) and ``convert`` (import and export, every tensor accounted for).
"""

from .configs import config_from_hf, hf_config_from
from .convert import export_hf, export_hf_state, family_of, import_hf_state
from .files import is_hf_folder, read_hf_config, read_hf_weights
from .names import SUPPORTED_FAMILIES, Entry

__all__ = [
    "SUPPORTED_FAMILIES",
    "Entry",
    "config_from_hf",
    "export_hf",
    "export_hf_state",
    "family_of",
    "hf_config_from",
    "import_hf_state",
    "is_hf_folder",
    "read_hf_config",
    "read_hf_weights",
]
