"""Scaling out: FSDP2 sharding, activation checkpointing and sharded (DCP) checkpoints that reshard.

The trainer stays one loop; this module is what changes when ``--strategy fsdp`` runs it on several processes:

- :func:`shard` applies ``torch.distributed.fsdp.fully_shard`` to every Transformer block and then to the loss module
  (model + objective) as the root, as TorchTitan does: a block's weights are gathered just for its own forward and
  backward, the rest (embeddings, norms, the tied head) for the whole loss. The mixed-precision policy is bf16
  weights with fp32 gradient reductions on a GPU under ``--dtype bf16``, fp32 otherwise (CPU, gloo).
- :func:`no_sync` skips the gradient reduction on the non-final micro-steps of an accumulated step (FSDP's
  ``set_requires_gradient_sync``, DDP's ``no_sync``).
- :func:`save_sharded` writes a checkpoint with ``torch.distributed.checkpoint`` (DCP): every rank writes its own
  shard of the model and optimizer as a safetensors file (DCP's Hugging Face storage writer, which keeps each
  shard's offsets as JSON in the safetensors header), rank 0 adds config, tokenizer and trainer state as JSON and
  the folder is renamed into place by the same temp-folder-then-manifest-then-rename save as every twinlm
  checkpoint, so a save killed on any rank never replaces the last good checkpoint.
- :func:`resume_state` loads any checkpoint, sharded on N ranks or ordinary, onto M ranks (DCP reshards), and
  :func:`consolidate` turns a sharded checkpoint into an ordinary checkpoint folder for inference and export.

Nothing here unpickles a file: DCP's default ``.metadata`` file is a pickle, so it is not used; the Hugging Face
storage reader rebuilds the metadata from the safetensors headers. (DCP still exchanges its save/load plans between
the job's own ranks with ``all_gather_object`` over the process group, which pickles in memory between peers of one
job; no checkpoint byte goes through it.)
"""

from __future__ import annotations

import contextlib
import functools
import json
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import checkpoint as ckpt
from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .loading import fit_weights
from .model import Block
from .runfolder import latest_checkpoint, list_checkpoints
from .tokenizer import load_tokenizer
from .trainstate import TRAINER_STATE_FILE, optimizer_state_from_safetensors, optimizer_state_to_safetensors

STRATEGIES = ("ddp", "fsdp")
SHARDS = "shards"  # the sub-folder of a sharded checkpoint that holds one safetensors file per rank
SHARDED_FORMAT = "twinlm-dcp-safetensors"
_MODEL, _OPTIM = "model.", "optim."


# --------------------------------------------------------------------------- wrapping


def check_strategy(strategy: str, compile: bool) -> None:
    """Raise ConfigError for an unknown strategy or a combination twinlm does not run."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {strategy!r}: choose {' or '.join(STRATEGIES)}")
    if strategy == "fsdp" and compile:
        raise ConfigError("--compile with --strategy fsdp is not supported yet; drop one of the two flags")


def checkpoint_blocks(model: nn.Module) -> int:
    """Recompute every Transformer block's activations in the backward pass instead of keeping them.

    The block's own ``forward`` is replaced on the instance (not wrapped in another module) so parameter names,
    and with them every checkpoint, stay the same; FSDP's hooks run around it, so a recomputation finds the block's
    weights gathered. Returns the number of blocks.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, Block) and not getattr(module, "_twinlm_checkpointed", False):
            module.forward = functools.partial(checkpoint, module.forward, use_reentrant=False)
            module._twinlm_checkpointed = True
            count += 1
    return count


def mixed_precision(device: torch.device, dtype: str) -> Any:
    """FSDP's policy: bf16 weights and fp32 gradient reductions on a GPU under bf16; fp32 throughout otherwise.

    Reductions stay fp32 because a sum of many bf16 gradients loses their low bits (TorchTitan's default too); on a
    CPU bf16 matmuls are slow and gloo reduces fp32 best, so CPU runs keep fp32 weights (autocast still applies).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device.type == "cuda" and dtype == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(model: nn.Module, loss_module: nn.Module, device: torch.device, dtype: str) -> nn.Module:
    """FSDP2: ``fully_shard`` each Transformer block of ``model``, then ``loss_module`` (which holds ``model``).

    The optimizer must be built after this call: sharding replaces the parameters with DTensor shards.
    """
    from torch.distributed.fsdp import fully_shard

    # A block returns its (k, v) cache as views; FSDP warns that an in-place op on them would skip its hooks.
    # Training never writes to that cache, so the warning would only be noise in every run's log.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    policy = mixed_precision(device, dtype)
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mp_policy=policy)
    fully_shard(loss_module, mp_policy=policy)
    # FSDP picks its root as the first sharded module to run forward; an evaluation before the first training step
    # would run a block first and make it the root, so the loss module is made the root now.
    loss_module._get_fsdp_state()._lazy_init()
    return loss_module


def is_sharded_model(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are FSDP shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def no_sync(module: nn.Module) -> contextlib.AbstractContextManager:
    """A context in which backward accumulates gradients locally without reducing them across ranks."""
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP2 (also through torch.compile's wrapper)
        return _fsdp_no_sync(module)
    return module.no_sync()  # DDP


@contextlib.contextmanager
def _fsdp_no_sync(module: nn.Module) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


@contextlib.contextmanager
def gathered(loss_module: nn.Module) -> Iterator[None]:
    """Outside the loss module's forward (evaluation), keep its own FSDP weights (embeddings, head) gathered.

    The blocks gather theirs in their own forward. Every rank must enter this together: it is a collective.
    """
    if not hasattr(loss_module, "unshard"):
        yield
        return
    loss_module.unshard()
    try:
        yield
    finally:
        loss_module.reshard()


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on rank 0 (CPU), gathered from the shards; every rank must call it.

    An unsharded model gives its ordinary ``state_dict()``.
    """
    if not is_sharded_model(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# --------------------------------------------------------------------------- sharded checkpoints: saving


def _flat(model_sd: Mapping[str, Any], optim_sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """One flat name -> tensor dict: ``model.<fqn>`` and ``optim.<fqn>.<state>`` (tensors only: the shards are
    safetensors; the optimizer's hyper-parameters go to trainer_state.json)."""
    flat = {_MODEL + k: v for k, v in model_sd.items()}
    for fqn, state in optim_sd.get("state", {}).items():
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"optimizer state '{fqn}.{name}' is a {type(value).__name__}, not a tensor; "
                                      "a sharded checkpoint stores tensors only")
            flat[f"{_OPTIM}{fqn}.{name}"] = value
    return flat


def _device_for_collectives() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _broadcast_text(text: str | None) -> str:
    """Rank 0's ``text`` on every rank (as bytes in a tensor: nothing pickled); None on rank 0 sends ''."""
    device = _device_for_collectives()
    data = (text or "").encode()
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, 0)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if dist.get_rank() == 0 and data:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, 0)
    return bytes(buf.cpu().tolist()).decode()


def _all_ok(ok: bool) -> bool:
    """True when ``ok`` holds on every rank."""
    flag = torch.tensor([int(ok)], dtype=torch.int64, device=_device_for_collectives())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _write_shards(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """This rank's shard of ``tensors`` as folder/shard-<rank+1>-model-00001-of-00001.safetensors (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter

    writer = HuggingFaceStorageWriter(str(folder), save_distributed=True)
    dcp.save(tensors, storage_writer=writer, no_dist=not dist.is_initialized())


def save_sharded(folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, config: ModelConfig,
                 tokenizer: Any | None, trainer_state: dict[str, Any]) -> Path:
    """Atomically write a sharded checkpoint: every rank its shard, rank 0 the rest; every rank must call it.

    Rank 0 builds the checkpoint in its temp sibling folder (the name goes to the other ranks), all ranks write
    their shards into it, rank 0 writes config, tokenizer and trainer_state.json, hashes every file into
    manifest.json and renames the folder into place. Until that rename the previous checkpoint is untouched, so a
    rank killed anywhere in between leaves it loadable (the next run sweeps the orphaned temp folder away).
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = Path(folder)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    tensors = _flat(model_sd, optim_sd)
    world = dist.get_world_size() if dist.is_initialized() else 1
    extra, groups = optimizer_state_to_safetensors({"state": {}, "param_groups": optim_sd["param_groups"]})
    if extra:
        raise CheckpointError("optimizer hyper-parameters hold tensors; a sharded checkpoint stores them as JSON")
    if dist.is_initialized() and dist.get_rank() != 0:
        tmp = _broadcast_text(None)
        error: Exception | None = None
        if tmp:
            try:
                _write_shards(Path(tmp) / SHARDS, tensors)
            except Exception as exc:  # still answer rank 0 below, or it would wait for this rank forever
                error = exc
        if not _all_ok(bool(tmp) and error is None):
            why = f"this rank's shard failed ({error})" if error else "rank 0 failed (see its error)"
            raise CheckpointError(f"could not write checkpoint {folder}: {why}; the previous checkpoint is "
                                  "untouched") from error
        return folder
    shared = False

    def fill(tmp: Path) -> None:
        nonlocal shared
        (tmp / SHARDS).mkdir()
        if dist.is_initialized():
            _broadcast_text(str(tmp))
        shared = True
        _write_shards(tmp / SHARDS, tensors)
        config.save(tmp)
        if tokenizer is not None:
            tokenizer.save(tmp)
        doc = {"format": ckpt.TRAINER_STATE_FORMAT, "version": ckpt.VERSION, "trainer": trainer_state,
               "optimizer": None, "scheduler": None,
               "sharded": {"format": SHARDED_FORMAT, "world_size": world, "param_groups": groups["param_groups"]}}
        (tmp / TRAINER_STATE_FILE).write_text(json.dumps(doc, indent=2, default=ckpt._json_default) + "\n")

    ok = False
    try:
        ckpt._atomic_save(folder, fill)
        ok = True
    finally:
        if dist.is_initialized():
            if not shared:  # failed before the other ranks learnt the folder: let them stop instead of waiting
                _broadcast_text(None)
            _all_ok(ok)
    return folder


# --------------------------------------------------------------------------- sharded checkpoints: loading


def is_sharded(folder: str | Path) -> bool:
    """Whether ``folder`` is a sharded (DCP) checkpoint."""
    return (Path(folder) / SHARDS).is_dir()


def sharded_source(source: str | None, run_dir: str | Path) -> bool:
    """Whether ``--resume source`` points at a sharded checkpoint (cheap: looks at folder names, hashes nothing)."""
    if not source:
        return False
    if source != "auto":
        return is_sharded(source)
    return any(is_sharded(p) for p in list_checkpoints(run_dir))


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """Without a process group DCP warns that it assumes one process: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _reader(folder: Path) -> Any:
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader

    return HuggingFaceStorageReader(str(folder / SHARDS))


def _sharded_doc(folder: Path) -> dict[str, Any]:
    path = folder / TRAINER_STATE_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc}); the checkpoint is damaged") from None
    sharded = doc.get("sharded") if isinstance(doc, dict) else None
    if not isinstance(sharded, dict) or sharded.get("format") != SHARDED_FORMAT:
        raise CheckpointError(f"{path}: not a twinlm sharded checkpoint (no '{SHARDED_FORMAT}' record)")
    return doc


def _saved_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """The full shape of every tensor in the shards, read from the safetensors headers."""
    meta = _reader(folder).read_metadata()
    return {k: tuple(m.size) for k, m in meta.state_dict_metadata.items()}


def _check_fits(model_sd: Mapping[str, Any], saved: Mapping[str, tuple[int, ...]], folder: Path) -> None:
    """The one 'weights do not fit' error, as for ordinary checkpoints, before DCP raises its own."""
    for name, value in model_sd.items():
        key = _MODEL + name
        if key not in saved:
            problem = f"tensor '{name}' is missing"
        elif tuple(value.shape) != saved[key]:
            problem = f"tensor '{name}' has shape {saved[key]}, the model needs {tuple(value.shape)}"
        else:
            continue
        raise CheckpointError(f"{folder}: weights do not fit the model's config: {problem}; the checkpoint and "
                              "config.json come from different models")


def load_sharded(folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load a sharded checkpoint saved on any number of ranks into ``model``/``optimizer`` (sharded on this job's
    ranks, or whole in one process); returns the trainer state. Every rank must call it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    folder = Path(folder)
    doc = _sharded_doc(folder)
    model_sd, optim_sd = get_state_dict(model, optimizer)  # creates the optimizer state to load into
    _check_fits(model_sd, _saved_shapes(folder), folder)
    tensors = _flat(model_sd, optim_sd)
    with _quiet_single_process():
        dcp.load(tensors, storage_reader=_reader(folder), no_dist=not dist.is_initialized())
    groups = optimizer_state_from_safetensors({}, {"state": {}, "param_groups": doc["sharded"]["param_groups"]})
    optim_sd = {"state": optim_sd["state"], "param_groups": groups["param_groups"]}
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    return doc.get("trainer") or {}


def _load_ordinary_into_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """An ordinary checkpoint (whole tensors, optimizer state by parameter index) into an FSDP-sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = ckpt.load_model_state(folder, verify=False)
    trainer_state, optim_state, _ = ckpt.load_training_state(folder, verify=False)
    own = model.state_dict()
    if set(own) != set(state) or any(tuple(own[k].shape) != tuple(state[k].shape) for k in own):
        fit_weights(model, state, folder)  # raises the one error naming the first tensor that does not fit
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    full_optim = None
    if optim_state is not None:
        full_optim = {"state": {order[int(i)]: s for i, s in optim_state["state"].items()},
                      "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]}
                                       for g in optim_state["param_groups"]]}
    set_state_dict(model, optimizer if full_optim is not None else [], model_state_dict=state,
                   optim_state_dict=full_optim or {}, options=StateDictOptions(full_state_dict=True))
    return trainer_state


def resume_state(source: str, run_dir: str | Path, model: nn.Module,
                 optimizer: torch.optim.Optimizer) -> tuple[Path, dict[str, Any]] | None:
    """Load ``source`` ('auto': the newest checkpoint of ``run_dir`` that verifies) into model and optimizer,
    sharded or ordinary, whatever the number of ranks it was saved on; (folder, trainer state), or None."""
    folder = latest_checkpoint(run_dir) if source == "auto" else Path(source)
    if folder is None:
        return None
    ckpt.verify_checkpoint(folder)
    if is_sharded(folder):
        return folder, load_sharded(folder, model, optimizer)
    if is_sharded_model(model):
        return folder, _load_ordinary_into_sharded(folder, model, optimizer)
    state = ckpt.load_model_state(folder, verify=False)
    trainer_state, optim_state, _ = ckpt.load_training_state(folder, verify=False)
    fit_weights(model, state, folder)
    if optim_state is not None:
        optimizer.load_state_dict(optim_state)
    return folder, trainer_state


# --------------------------------------------------------------------------- conversion


def read_sharded(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a sharded checkpoint, whole, in one process (no process group): ``model.<fqn>`` and
    ``optim.<fqn>.<state>``."""
    import torch.distributed.checkpoint as dcp

    folder = Path(folder)
    meta = _reader(folder).read_metadata()
    tensors = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.state_dict_metadata.items()}
    with _quiet_single_process():
        dcp.load(tensors, storage_reader=_reader(folder), no_dist=True)
    return tensors


def read_sharded_model_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """The whole model state dict of a sharded checkpoint (verified first)."""
    ckpt.verify_checkpoint(folder)
    return {k[len(_MODEL):]: v for k, v in read_sharded(folder).items() if k.startswith(_MODEL)}


def consolidate(folder: str | Path, out: str | Path) -> Path:
    """Write ``out``: an ordinary checkpoint (model.safetensors, optimizer, trainer state, config, tokenizer) of the
    sharded checkpoint ``folder``, for inference, Hugging Face export or resuming on any number of ranks."""
    folder, out = Path(folder), Path(out)
    if not is_sharded(folder):
        raise CheckpointError(f"{folder}: not a sharded checkpoint (no {SHARDS}/ folder); it is already an "
                              "ordinary model or checkpoint folder")
    ckpt.verify_checkpoint(folder)
    doc = _sharded_doc(folder)
    tensors = read_sharded(folder)
    model_state = {k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)}
    groups = optimizer_state_from_safetensors({}, {"state": {}, "param_groups": doc["sharded"]["param_groups"]})
    # Parameters are numbered in the order of the saved parameter groups, as optimizer.state_dict() numbers them.
    order = [fqn for group in groups["param_groups"] for fqn in group["params"]]
    index = {fqn: i for i, fqn in enumerate(order)}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(_OPTIM):
            fqn, name = key[len(_OPTIM):].rsplit(".", 1)
            state.setdefault(index[fqn], {})[name] = value
    optimizer = {"state": dict(sorted(state.items())),
                 "param_groups": [{**g, "params": [index[f] for f in g["params"]]} for g in groups["param_groups"]]}
    try:
        tokenizer = load_tokenizer(folder)
    except CheckpointError:
        tokenizer = None  # trained without one; the ordinary folder has none either
    return ckpt.save_checkpoint(out, model_state=model_state, config=ModelConfig.load(folder), tokenizer=tokenizer,
                                trainer_state=doc.get("trainer") or {}, optimizer_state=optimizer,
                                scheduler_state=doc.get("scheduler"))
