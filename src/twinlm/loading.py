"""The one door in for a model: a path or name -> model, tokenizer, config and info.

Every caller (pipelines, fine-tuning, resume, conversion, the CLI) loads through :func:`load`, which alone knows
the places a model can live:

- a twinlm model folder (``config.json`` + ``model.safetensors`` + tokenizer files), or a checkpoint folder;
- a twinlm run folder: its ``best/`` (fine-tuning keeps the best evaluation there), else its newest checkpoint
  that verifies;
- a Hugging Face model folder (BERT, RoBERTa, DistilBERT, GPT-2, Llama-style), imported through :mod:`twinlm.hf`;
- ``hf:ORG/NAME``: that model in the local Hugging Face cache, or downloaded when the network allows.

It checks the tokenizer against the embedding once (:func:`check_vocab`) and raises the one "weights do not fit"
error, naming the first tensor that does not (:func:`fit_weights`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt
from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .heads import TaskModel
from .hf import SUPPORTED_FAMILIES, export_hf, family_of, import_hf_state, is_hf_folder
from .model import LanguageModel
from .runfolder import latest_checkpoint
from .tokenizer import Tokenizer, load_tokenizer

HF_PREFIX = "hf:"
# What a download fetches: configs, tokenizer files and safetensors weights (never a pickle).
HUB_FILES = ["*.json", "*.txt", "*.safetensors", "*.model"]


@dataclass
class Loaded:
    """A loaded model and what came with it.

    ``model`` is a LanguageModel, or a TaskModel (backbone + head) for a fine-tuned folder; ``lm`` is the language
    model either way. ``info`` has ``source`` (what was asked for), ``folder`` (where it was found), ``format``
    ('twinlm' or 'huggingface'), ``task`` (the fine-tuning record or None), ``notes`` (things the user should
    know) and, for Hugging Face folders, ``family`` and ``extra_tensors`` (task-head tensors twinlm did not map).
    """

    model: nn.Module
    tokenizer: Tokenizer | None
    config: ModelConfig
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def lm(self) -> LanguageModel:
        return getattr(self.model, "lm", self.model)


# --------------------------------------------------------------------------- where a model lives


def resolve_hf_path(ref: str | Path, cache_dir: str | Path | None = None) -> Path:
    """``ref`` itself, or for ``hf:ORG/NAME`` its snapshot: from the local cache, else downloaded when online."""
    text = str(ref)
    if not text.startswith(HF_PREFIX):
        return Path(ref)
    repo_id = text[len(HF_PREFIX):].strip("/")
    if not repo_id:
        raise CheckpointError(f"{text}: say which model, e.g. hf:bert-base-uncased or hf:ORG/NAME")
    hub = _hub()
    if hub is None:
        raise CheckpointError(
            f"{text}: huggingface_hub is not installed, so the Hugging Face cache cannot be read "
            "(pip install 'twinlm[hub]'); or pass the model's folder instead (config.json + model.safetensors)"
        )
    try:
        return Path(hub.snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir,
                                          allow_patterns=HUB_FILES))
    except Exception:  # LocalEntryNotFoundError and friends: not cached, try the network below
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):  # huggingface_hub's rule
        raise CheckpointError(
            f"{text}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set, so it cannot be downloaded; "
            f"fetch it where there is network (`huggingface-cli download {repo_id}`) or pass its folder instead"
        )
    try:
        return Path(hub.snapshot_download(repo_id, cache_dir=cache_dir, allow_patterns=HUB_FILES))
    except Exception as exc:  # no network, unknown repo, gated model: one line, and what to pass instead
        raise CheckpointError(
            f"{text}: not in the local Hugging Face cache and the download failed ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'}); this machine may be "
            f"offline: fetch it where there is network (`huggingface-cli download {repo_id}`) or pass its folder"
        ) from None


def _hub() -> Any:
    """The huggingface_hub module, or None when the optional extra is not installed (tests replace this)."""
    try:
        import huggingface_hub
    except ImportError:
        return None
    return huggingface_hub


def resolve(path: str | Path) -> Path:
    """The model folder ``path`` names: itself, a run's best/, its newest valid checkpoint, or hf:ORG/NAME."""
    folder = resolve_hf_path(path)
    if not folder.exists():
        raise CheckpointError(f"{folder}: no such model folder; pass the --out folder of a training run, a model "
                              "folder, a Hugging Face folder or hf:ORG/NAME")
    if (folder / "config.json").is_file():
        return _not_sharded(folder)
    if (folder / "best" / "config.json").is_file():
        return folder / "best"
    latest = latest_checkpoint(folder)
    if latest is None:
        raise CheckpointError(f"{folder}: no config.json, no best/ and no complete checkpoint-* folder inside")
    return _not_sharded(latest)


def _not_sharded(folder: Path) -> Path:
    """``folder``, unless it is an FSDP checkpoint (per-rank shards in shards/, no whole model.safetensors)."""
    if (folder / "shards").is_dir() and not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"{folder}: a sharded (FSDP) checkpoint; make a model folder of it first: "
                              f"twinlm convert --from-sharded {folder} --out MODEL_DIR")
    return folder


# --------------------------------------------------------------------------- the two checks


def check_vocab(tokenizer: Tokenizer, vocab_size: int, folder: str | Path) -> None:
    """Refuse a tokenizer whose ids do not match the embedding rows (twinlm's own appended [MASK] excepted)."""
    n = tokenizer.vocab_size
    # Loading GPT-2-style files appends one [MASK] after the vocabulary so masked training works; a causal
    # model never produces it, so one surplus id that is exactly that mask is fine.
    if n == vocab_size or (n == vocab_size + 1 and tokenizer.mask_id == vocab_size):
        return
    raise CheckpointError(
        f"{folder}: tokenizer has {n} tokens but the model's vocab_size (embedding rows) is {vocab_size}; "
        "the tokenizer files do not belong to this checkpoint"
    )


def fit_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str | Path) -> None:
    """Load ``state`` into ``model`` strictly, or raise the one error naming the first tensor that does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]

    def more(names: list[str]) -> str:
        return f" (and {len(names) - 1} more)" if len(names) > 1 else ""

    if missing:
        problem = f"tensor '{missing[0]}' is missing{more(missing)}"
    elif unexpected:
        problem = f"tensor '{unexpected[0]}' is not part of this model{more(unexpected)}"
    elif wrong:
        k = wrong[0]
        problem = f"tensor '{k}' has shape {tuple(state[k].shape)}, the model needs {tuple(own[k].shape)}{more(wrong)}"
    else:
        model.load_state_dict(state)
        return
    raise CheckpointError(f"{where}: weights do not fit the model's config: {problem}; the weights and config.json "
                          "come from different models")


# --------------------------------------------------------------------------- loading


def load(path: str | Path, *, task: str | None = None, device: str | torch.device = "cpu",
         tokenizer_required: bool = True) -> Loaded:
    """Load a model (eval mode, on ``device``) from anything :func:`resolve` accepts.

    ``task`` None returns whatever the folder holds (a language model, or a TaskModel for a fine-tuned folder);
    ``task`` 'classify', 'qa' or 'ner' requires a model fine-tuned for that task.
    """
    folder = resolve(path)
    if is_hf_folder(folder):
        model, info = load_hf(folder, device)
        config, info = model.config, {**info, "format": "huggingface", "task": None}
        check_task(None, task, folder, path)
    else:
        config = ModelConfig.load(folder)
        recorded = config.extra.get("task")
        check_task(recorded, task, folder, path)
        lm = LanguageModel(config)
        model = (TaskModel(lm, recorded["task"], len(recorded["labels"]), recorded.get("problem", "single_label"),
                           recorded.get("pooling", "auto")) if recorded else lm)
        fit_weights(model, ckpt.load_model_state(folder), folder)
        model = model.to(device).eval()
        info = {"format": "twinlm", "task": recorded, "notes": [], "extra_tensors": {}}
    info.update(source=str(path), folder=str(folder))
    tokenizer = _tokenizer(folder, info, tokenizer_required)
    if tokenizer is not None:
        check_vocab(tokenizer, config.vocab_size, folder)
    return Loaded(model, tokenizer, config, info)


def load_hf(folder: str | Path, device: str | torch.device = "cpu") -> tuple[LanguageModel, dict[str, Any]]:
    """(twinlm model in eval mode, import info) from a Hugging Face model folder or ``hf:ORG/NAME``."""
    folder = resolve_hf_path(folder)
    config, state, info = import_hf_state(folder)
    model = LanguageModel(config)
    fit_weights(model, state, folder)
    return model.to(device).eval(), info


def check_task(recorded: dict | None, wanted: str | None, folder: str | Path, source: str | Path) -> None:
    """Raise unless a model whose config records ``recorded`` (None: no task head) can serve ``wanted``."""
    if wanted is None:
        return
    if recorded is None:
        raise CheckpointError(f"{folder}: a pretrained language model without a task head; fine-tune it first "
                              f"(`twinlm finetune --task {wanted} --init {source} ...`)")
    if recorded["task"] != wanted:
        raise ConfigError(f"{folder}: this model was fine-tuned for --task {recorded['task']}, not --task {wanted}")


def _tokenizer(folder: Path, info: dict[str, Any], required: bool) -> Tokenizer | None:
    try:
        return load_tokenizer(folder)
    except CheckpointError as exc:
        if required:
            raise
        info["notes"].append(f"no usable tokenizer ({exc}); add tokenizer files before using the model")
        return None


def load_pretrained(path: str | Path, device: str = "cpu") -> tuple[LanguageModel, Tokenizer]:
    """(language model in eval mode, tokenizer): the pipelines' shorthand for :func:`load` of a pretrained model."""
    loaded = load(path, device=device)
    if isinstance(loaded.model, TaskModel):
        task = loaded.info["task"]["task"]
        raise CheckpointError(f"{loaded.info['folder']}: this model was fine-tuned for --task {task}; use it with "
                              f"`twinlm evaluate`/`classify`/`answer`/`tag`, or pass the pretrained model it "
                              "started from")
    return loaded.lm, loaded.tokenizer  # type: ignore[return-value]


def load_task_model(path: str | Path, task: str | None = None, device: str = "cpu") -> tuple[TaskModel, Tokenizer]:
    """(fine-tuned TaskModel in eval mode, tokenizer); ``task`` given: it must have been trained for that task."""
    loaded = load(path, task=task, device=device)
    if not isinstance(loaded.model, TaskModel):
        check_task(None, "classify|qa|ner", Path(loaded.info["folder"]), path)
    return loaded.model, loaded.tokenizer  # type: ignore[return-value]


def training_state(source: str, run_dir: str | Path) -> tuple[Path, dict, dict, dict | None] | None:
    """What Trainer.resume needs: (folder, model state, trainer state, optimizer state), or None.

    ``source`` 'auto' takes the newest checkpoint in ``run_dir`` that verifies (None when there is none yet);
    anything else is a checkpoint folder, which must verify.
    """
    folder = latest_checkpoint(run_dir) if source == "auto" else Path(source)
    if folder is None:
        return None
    ckpt.verify_checkpoint(folder)
    state = ckpt.load_model_state(folder, verify=False)
    trainer_state, optim_state, _ = ckpt.load_training_state(folder, verify=False)
    return folder, state, trainer_state, optim_state


# --------------------------------------------------------------------------- conversions (the CLI's `convert`)


def convert_from_hf(src: str | Path, out: str | Path) -> tuple[Path, dict[str, Any]]:
    """Write a twinlm model folder (weights, config, tokenizer, manifest) from a Hugging Face folder or hf:ORG/NAME."""
    loaded = load(src, tokenizer_required=False)
    if loaded.info["format"] != "huggingface":
        raise CheckpointError(f"{loaded.info['folder']}: already a twinlm model folder; nothing to convert")
    path = ckpt.save_model(out, model_state=loaded.model.state_dict(), config=loaded.config,
                           tokenizer=loaded.tokenizer)
    return path, loaded.info


def convert_to_hf(src: str | Path, out: str | Path, family: str | None = None) -> tuple[Path, str]:
    """Write a Hugging Face folder from a twinlm model/checkpoint/run folder (family defaults to the imported one)."""
    model, tokenizer = load_pretrained(src)
    family = family or family_of(model.config)
    if family is None:
        raise ConfigError(f"{src}: say which Hugging Face family to write with --family "
                          f"({', '.join(SUPPORTED_FAMILIES)})")
    return export_hf(model, tokenizer, out, family), family
