"""How ``compare`` reads a user's data: batches, their inputs and targets, the model call and its output.

The forms accepted, so that data and models are used as PyTorch and Hugging Face users already have them:

* **The data**: an ``(inputs, targets)`` pair holding the whole data set (cut into ``batch_size`` batches), a
  mapping of tensors holding the whole data set with the targets under ``target_key`` (a tokenizer's output
  with its labels; cut the same way), or any iterable of batches, such as a ``torch.utils.data.DataLoader``.
  An iterable is read once into a fixed list (:func:`evaluation_batches`), so every pass sees the same data.
* **A batch**: ``(inputs, targets)`` (a tuple or list; items after the second are ignored), or a mapping (a
  ``dict``, a tokenizer's ``BatchEncoding``) whose target is under ``target_key`` (default ``"labels"``) and
  whose other items are the inputs. Batches may differ in shape (dynamic padding: each batch padded to its own
  longest sentence).
* **The inputs** of a batch and how the model is called (:func:`call_model`): a tensor, ``model(x)``; a tuple
  or list, ``model(*inputs)``; a mapping, ``model(**inputs)``. The batch size is the leading size of the
  first tensor in the inputs (:func:`batch_size_of`).
* **The device**: data may stay on the CPU whatever device a model is on. A model runs on the device of its
  first parameter or buffer (:func:`model_device`; a model of PyTorch's int8 modules on the CPU, where their
  kernels run), and its inputs' tensors are moved there (:func:`to_device`) before it is called.
* **The output** (:func:`model_output`): ``output_fn(output) -> tensor`` when given, else
  :func:`default_output`: a tensor as it is, the first tensor of a tuple or list (early exits return more),
  or the ``.logits`` tensor of an object that has one (a Hugging Face ``ModelOutput``).

A batch the harness cannot read is a :class:`~greenmeter.ConfigError` that says what the batch is (``batch 0
is a dict with keys input_ids, attention_mask and no 'labels'``) and the option that would fix it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from greenmeter._checks import text
from greenmeter._errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_TARGET_KEY", "Batch", "OutputFn", "batch_size_of", "call_model", "calibration_inputs",
           "check_device", "check_output_fn", "check_target_key", "default_output", "describe", "device_sync",
           "evaluation_batches", "first_samples", "model_device", "model_output", "read_batch", "to_device"]

#: The key of the targets in a mapping batch, unless ``target_key=`` names another (Hugging Face's name).
DEFAULT_TARGET_KEY = "labels"
#: ``output_fn(model_output) -> torch.Tensor``: what a model returns, reduced to the tensor the metric sees.
OutputFn = Callable[[Any], "torch.Tensor"]


class Batch(NamedTuple):
    """One batch as the harness holds it (a pair, so ``for inputs, targets in batches`` works).

    Attributes:
        inputs: a tensor, a tuple of tensors (``model(*inputs)``) or a mapping (``model(**inputs)``).
        targets: the batch's targets (a tensor for the built-in accuracy: labels ``(N,)``).
    """

    inputs: Any
    targets: Any

    @property
    def size(self) -> int:
        """Samples in the batch: the leading size of the first tensor in the inputs."""
        return batch_size_of(self.inputs) or 0


def check_target_key(target_key: Any) -> str:
    """Check ``target_key=``: a non-empty string. Returns it; ConfigError otherwise."""
    return text("target_key", target_key)


def check_output_fn(output_fn: Any) -> OutputFn | None:
    """Check ``output_fn=``: ``None`` or a callable. Returns it; ConfigError otherwise."""
    if output_fn is not None and not callable(output_fn):
        raise ConfigError(f"output_fn must be a function output_fn(model_output) -> tensor, or None for the default "
                          f"(a tensor, the first tensor of a tuple, or .logits), not {output_fn!r}")
    return output_fn


def describe(value: Any) -> str:
    """What ``value`` is, in words for an error message: ``"a dict with keys input_ids, attention_mask"``,
    ``"a tuple of 3 items (Tensor, Tensor, str)"``, ``"a Tensor of shape (8, 16)"``."""
    import torch

    kind = type(value).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    if isinstance(value, torch.Tensor):
        return f"a Tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        keys = ", ".join(map(str, value)) or "no keys"
        return f"{article} {kind} with keys {keys}" if value else f"an empty {kind}"
    if isinstance(value, (tuple, list)):
        items = ", ".join(type(v).__name__ for v in value[:4]) + (", ..." if len(value) > 4 else "")
        return f"{article} {kind} of {len(value)} item{'s' if len(value) != 1 else ''} ({items})"
    return f"{article} {kind}"


def _tensors(inputs: Any) -> Iterator[torch.Tensor]:
    """The tensors of the inputs, in order: the tensor itself, a tuple's items, a mapping's values."""
    import torch

    items = inputs.values() if isinstance(inputs, Mapping) else inputs if isinstance(inputs, (tuple, list)) else (
        inputs,)
    return (t for t in items if isinstance(t, torch.Tensor))


def batch_size_of(inputs: Any) -> int | None:
    """The number of samples in ``inputs``: the leading size of its first tensor (the tensor itself, a tuple's or
    list's first tensor, a mapping's first tensor value); ``None`` when it holds no tensor with a batch dimension."""
    first = next(_tensors(inputs), None)
    return None if first is None or first.dim() == 0 else int(first.shape[0])


def model_device(model: Any) -> torch.device | None:
    """The device ``model`` runs on: that of its first parameter, else of its first buffer, else the CPU for a
    model holding PyTorch's quantized modules (``torch.ao.nn.quantized``: their int8 kernels are CPU kernels and
    their packed weights are neither); ``None`` when nothing says (a model holding no tensors, or not a
    ``torch.nn.Module``)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return None
    for tensors in (model.parameters(), model.buffers()):
        first = next(tensors, None)
        if first is not None:
            return first.device
    if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules()):
        return torch.device("cpu")
    return None


def device_sync(device: torch.device | None) -> Callable[[], None] | None:
    """``torch.cuda.synchronize(device)`` as a function for a CUDA device (a timed step then ends when its work is
    done, not when it was queued), ``None`` for any other device (or none known): nothing is queued there."""
    if device is None or device.type != "cuda":
        return None
    import torch

    return lambda: torch.cuda.synchronize(device)


def to_device(inputs: Any, device: torch.device | str | None) -> Any:
    """``inputs`` with each tensor on ``device``: a tensor, or the tensors of a tuple, a list or a mapping (one
    level deep, as a batch's inputs are read; other items as they are). A tensor already there is the same
    object, so on the model's own device this costs nothing. ``None``: ``inputs`` unchanged."""
    import torch

    if device is None:
        return inputs

    def move(value: Any) -> Any:
        return value.to(device) if isinstance(value, torch.Tensor) else value

    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        moved = {k: move(v) for k, v in inputs.items()}
        if all(moved[k] is v for k, v in inputs.items()):
            return inputs
        return moved
    if isinstance(inputs, (tuple, list)):
        moved_items = [move(v) for v in inputs]
        if all(a is b for a, b in zip(moved_items, inputs)):
            return inputs
        return moved_items if isinstance(inputs, list) else tuple(moved_items)
    return inputs


def check_device(name: str, value: Any) -> str:
    """Check a device to run a model on, as ``torch.device`` reads it (``"cpu"``, ``"cuda"``, ``"cuda:1"``), and
    that this machine has it.

    Returns:
        The value, unchanged.

    Raises:
        ConfigError: not a device name; a CUDA device where torch sees none (a CPU build of torch, no driver) or
            an index past the last; another accelerator type whose torch module says it is not available.
    """
    import torch

    text(name, value)
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ConfigError(f"{name} must be a device such as 'cpu', 'cuda' or 'cuda:1', not {value!r}") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ConfigError(f"{name} is {value!r}, but torch sees no CUDA device here (torch {torch.__version__}, "
                              f"{build}); use 'cpu', or install a CUDA build of torch on a machine with a GPU")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{name} is {value!r}, but this machine has {count} CUDA device(s): "
                              f"{', '.join(f'cuda:{i}' for i in range(count))}")
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)
        available = getattr(backend, "is_available", None)
        if callable(available) and not available():
            raise ConfigError(f"{name} is {value!r}, but torch says {device.type} is not available here; use 'cpu'")
    return value


def call_model(model: Any, inputs: Any, *, move: bool = True) -> Any:
    """Call ``model`` on one batch's inputs: ``model(**inputs)`` for a mapping, ``model(*inputs)`` for a tuple or
    list, ``model(inputs)`` otherwise. Returns what the model returns.

    With ``move`` (the default) the inputs' tensors are put on the model's device first (:func:`model_device`;
    no copy when they are there already); ``move=False`` is for inputs the caller has put there, in a timed loop.
    """
    if move:
        inputs = to_device(inputs, model_device(model))
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def default_output(output: Any) -> torch.Tensor:
    """The tensor the metric sees when no ``output_fn`` is given: a tensor as it is; the first item of a tuple or
    list when it is a tensor (early exits return more); the ``.logits`` of an object that has a tensor there (a
    Hugging Face ``ModelOutput``).

    Raises:
        ConfigError: none of these, naming ``output_fn=``.
    """
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise ConfigError(f"the model returned {describe(output)}, which greenmeter cannot reduce to one tensor (it takes "
                      "a tensor, the first tensor of a tuple, or a .logits tensor): pass output_fn=, a function "
                      "from the model's output to the tensor the metric should see (for example "
                      "output_fn=lambda out: out.last_hidden_state[:, 0])")


def model_output(model: Any, inputs: Any, output_fn: OutputFn | None = None, *, move: bool = True) -> torch.Tensor:
    """The model's output on one batch's inputs (:func:`call_model`, given ``move``) as one tensor:
    ``output_fn(output)``, or :func:`default_output` when ``output_fn`` is ``None``.

    Raises:
        ConfigError: the output cannot be reduced by the default, or ``output_fn`` returned no tensor.
    """
    import torch

    out = call_model(model, inputs, move=move)
    if output_fn is None:
        return default_output(out)
    reduced = output_fn(out)
    if not isinstance(reduced, torch.Tensor):
        raise ConfigError(f"output_fn returned {describe(reduced)} for {describe(out)}; it must return a tensor")
    return reduced


def read_batch(item: Any, index: int, target_key: str = DEFAULT_TARGET_KEY) -> Batch:
    """One batch of the user's data as a :class:`Batch`.

    Args:
        item: ``(inputs, targets, ...)`` (a tuple or list), or a mapping with the targets under ``target_key``.
        index: the batch's position, for the error message.
        target_key: the key of the targets in a mapping batch.

    Raises:
        ConfigError: what the batch is and the option that fixes it: a mapping without ``target_key``, an item
            that is neither a pair nor a mapping, inputs without a tensor, targets whose count differs from the
            inputs'.
    """
    import torch

    if isinstance(item, Mapping):
        if target_key not in item:
            raise ConfigError(f"batch {index} is {describe(item)} and no {target_key!r}: {_name_the_key(item)}, or "
                              "yield (inputs, targets) pairs")
        batch = Batch({k: v for k, v in item.items() if k != target_key}, item[target_key])
    elif isinstance(item, (tuple, list)) and len(item) >= 2:
        batch = Batch(item[0], item[1])
    else:
        raise ConfigError(f"batch {index} is {describe(item)}: compare needs (inputs, targets) batches, or dicts with "
                          f"the targets under target_key= (now {target_key!r})")
    size = batch_size_of(batch.inputs)
    if size is None:
        raise ConfigError(f"the inputs of batch {index} are {describe(batch.inputs)}, with no tensor whose first "
                          "dimension is the batch: give a tensor, a tuple of tensors or a dict of tensors")
    targets = batch.targets
    if isinstance(targets, torch.Tensor) and targets.dim() and len(targets) != size:
        raise ConfigError(f"batch {index} has {size} inputs (the first dimension of its first input tensor) but "
                          f"{len(targets)} targets")
    return batch


def _name_the_key(mapping: Mapping[Any, Any]) -> str:
    """How to name the targets' key, with a key of ``mapping`` that looks like one as the example."""
    likely = [k for k in mapping if isinstance(k, str) and any(w in k.lower() for w in ("label", "target", "class"))]
    example = repr(likely[0]) if likely else "'your_key'"
    return f"name the key of the targets with target_key= (for example target_key={example})"


def _cut(value: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of every tensor in ``value`` (a tensor, a tuple or list, a mapping), the rest kept."""
    import torch

    if isinstance(value, torch.Tensor):
        return value[start:stop] if value.dim() else value
    if isinstance(value, Mapping):
        return {k: _cut(v, start, stop) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v, start, stop) for v in value]
    if isinstance(value, tuple):
        return tuple(_cut(v, start, stop) for v in value)
    return value


def first_samples(inputs: Any, n: int) -> Any:
    """The first ``n`` samples of a batch's inputs, in the same form (a tensor, tuple or dict)."""
    return _cut(inputs, 0, n)


def _whole(data: Any, target_key: str) -> tuple[Any, Any] | None:
    """``(inputs, targets)`` when ``data`` holds the whole data set in tensors, ``None`` when it is batches."""
    import torch

    if isinstance(data, Mapping):
        if target_key not in data:
            raise ConfigError(f"the evaluation data is {describe(data)} and no {target_key!r}: {_name_the_key(data)}")
        return read_batch(data, 0, target_key)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], torch.Tensor):
        inputs = data[0]
        if isinstance(inputs, torch.Tensor) or (isinstance(inputs, (tuple, list, Mapping)) and inputs and all(
                isinstance(t, torch.Tensor) for t in (inputs.values() if isinstance(inputs, Mapping) else inputs))):
            return inputs, data[1]
    return None


def evaluation_batches(data: Any, batch_size: int, *, target_key: str = DEFAULT_TARGET_KEY) -> list[Batch]:
    """The evaluation data as a fixed list of :class:`Batch` es, so every pass sees the same data.

    Args:
        data: the whole data set, cut into batches of ``batch_size``: an ``(inputs, targets)`` pair whose targets
            are a tensor and whose inputs are a tensor, a tuple of tensors or a dict of tensors, or a mapping of
            tensors with the targets under ``target_key``. Or an iterable of batches (a list, a ``DataLoader``),
            read once and kept as they are: each ``(inputs, targets, ...)`` or a mapping (:func:`read_batch`).
        batch_size: samples per batch when the data is cut, >= 1.
        target_key: the key of the targets in mapping batches (default ``"labels"``).

    Raises:
        ConfigError: inputs and targets of different lengths, a batch it cannot read (:func:`read_batch`), data
            that is neither form, empty data.
    """
    whole = _whole(data, target_key)
    if whole is not None:
        inputs, targets = whole
        n = batch_size_of(inputs)
        if n is None:
            raise ConfigError(f"the evaluation inputs are {describe(inputs)}, with no tensor whose first dimension "
                              "is the samples")
        lengths = {len(t) for t in _tensors(inputs) if t.dim()} | {len(targets)}
        if len(lengths) > 1:
            raise ConfigError(f"the evaluation inputs and targets differ in length ({', '.join(map(str, sorted(lengths)))}"
                              " samples)")
        out = [read_batch((_cut(inputs, i, i + batch_size), targets[i:i + batch_size]), i // batch_size, target_key)
               for i in range(0, n, batch_size)]
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        out = [read_batch(item, i, target_key) for i, item in enumerate(data)]
    else:
        raise ConfigError(f"data must be an (inputs, targets) pair, a dict of tensors with the targets under "
                          f"target_key, or an iterable of batches (a DataLoader), not {describe(data)}")
    if not out or sum(b.size for b in out) == 0:
        raise ConfigError("the evaluation data is empty: compare needs at least one (inputs, targets) batch")
    return out


def calibration_inputs(source: Any, target_key: str = DEFAULT_TARGET_KEY, limit: int | None = None) -> list[Any]:
    """The model inputs of calibration data: a tensor (one batch), or an iterable of tensors, of ``(inputs, ...)``
    tuples or lists, or of mappings (``target_key`` removed when present); at most ``limit`` batches.

    Raises:
        ConfigError: an item with no tensor to run the model on.
    """
    import torch

    if isinstance(source, torch.Tensor):
        return [source]
    out: list[Any] = []
    for i, item in enumerate(source):
        if limit is not None and len(out) >= limit:
            break
        if isinstance(item, Mapping):
            inputs: Any = {k: v for k, v in item.items() if k != target_key}
        elif isinstance(item, (tuple, list)) and item:
            inputs = item[0]
        else:
            inputs = item
        if batch_size_of(inputs) is None:
            raise ConfigError(f"calibration batch {i} is {describe(item)}: give input tensors, (inputs, targets) "
                              "batches or dicts of tensors")
        out.append(inputs)
    return out
