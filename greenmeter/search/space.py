"""A search space declared in code: named dimensions with their choices, and a builder of models.

A configuration is a mapping of every dimension to one of its choices, e.g. ``{"depth": 2, "width": 32,
"kernel": 3, "hidden": 128, "downsample": "pool"}``. Its canonical JSON (sorted keys, no spaces) is its identity
in caches and records. :func:`digits_cnn_space` is the bundled space for the digits task; it holds the
hand-designed baseline :func:`greenmeter.demo.digits.make_digits_cnn` as one of its points
(:data:`DIGITS_BASELINE_CONFIG`).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenmeter._errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["DIGITS_BASELINE_CONFIG", "Mutation", "SearchSpace", "config_key", "digits_cnn_space"]

Config = Mapping[str, Any]
#: The point of :func:`digits_cnn_space` that is exactly :func:`greenmeter.demo.digits.make_digits_cnn` (width 1.0).
DIGITS_BASELINE_CONFIG: dict[str, Any] = {"depth": 2, "width": 32, "kernel": 3, "hidden": 128, "downsample": "pool"}


def config_key(config: Config) -> str:
    """The canonical JSON of a configuration (sorted keys, no spaces): its identity in caches and records."""
    return json.dumps(dict(config), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Mutation:
    """One dimension changed from a parent configuration to a child.

    Attributes:
        dimension: the dimension's name.
        old: the parent's choice.
        new: the child's choice.
    """

    dimension: str
    old: Any
    new: Any

    def describe(self) -> str:
        """``"width 16->32"``."""
        return f"{self.dimension} {self.old}->{self.new}"


@dataclass(frozen=True)
class SearchSpace:
    """Named dimensions, each with a tuple of choices, and the function that builds a model from a config.

    Attributes:
        name: the space's name; part of the cache key, so change it when ``build`` changes.
        dimensions: dimension name -> its choices (JSON scalars: int, float, str, bool), at least one each.
        build: ``build(config) -> nn.Module``, a new untrained model; called after ``torch.manual_seed``
            so its initial weights are deterministic.

    Raises:
        ConfigError: no dimensions, a dimension without choices, a repeated or non-JSON choice, or a
            ``build`` that is not callable.
    """

    name: str
    dimensions: Mapping[str, tuple[Any, ...]]
    build: Callable[[Config], nn.Module]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("a SearchSpace needs a non-empty name (it is part of the cache key)")
        if not isinstance(self.dimensions, Mapping) or not self.dimensions:
            raise ConfigError("a SearchSpace needs at least one dimension, e.g. {'width': (8, 16, 32)}")
        dims: dict[str, tuple[Any, ...]] = {}
        for dim, choices in self.dimensions.items():
            choices = tuple(choices) if isinstance(choices, (list, tuple)) else None
            if not isinstance(dim, str) or not choices:
                raise ConfigError(f"dimension {dim!r} needs a non-empty tuple of choices, not {self.dimensions[dim]!r}")
            for c in choices:
                if isinstance(c, float) and not math.isfinite(c) or not isinstance(c, (int, float, str, bool)):
                    raise ConfigError(f"dimension {dim!r}: choice {c!r} is not a JSON scalar (int, float, str, bool)")
            if len(set(map(json.dumps, choices))) != len(choices):
                raise ConfigError(f"dimension {dim!r} repeats a choice: {choices!r}")
            dims[dim] = choices
        object.__setattr__(self, "dimensions", dims)
        if not callable(self.build):
            raise ConfigError("SearchSpace.build must be a callable config -> nn.Module")

    @property
    def size(self) -> int:
        """The number of distinct configurations."""
        return math.prod(len(c) for c in self.dimensions.values())

    def validate(self, config: Config) -> dict[str, Any]:
        """The config as a plain dict, checked: every dimension present with one of its choices, no others.

        Raises:
            ConfigError: a missing or unknown dimension, or a value that is not one of the choices.
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"a configuration is a mapping of dimension to choice, not {type(config).__name__}")
        unknown = sorted(set(config) - set(self.dimensions))
        missing = [d for d in self.dimensions if d not in config]
        if unknown or missing:
            raise ConfigError(f"configuration {dict(config)!r} for space {self.name!r}: "
                              f"missing {missing}, unknown {unknown}")
        for dim, choices in self.dimensions.items():
            if json.dumps(config[dim]) not in {json.dumps(c) for c in choices}:
                raise ConfigError(f"{dim}={config[dim]!r} is not one of {choices!r} in space {self.name!r}")
        return {d: config[d] for d in self.dimensions}

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A configuration drawn uniformly (each dimension independently) with ``rng``."""
        return {dim: rng.choice(choices) for dim, choices in self.dimensions.items()}

    def mutate(self, config: Config, rng: random.Random) -> tuple[dict[str, Any], Mutation]:
        """A child of ``config`` with exactly one dimension changed to another of its choices.

        The dimension is drawn uniformly among those with more than one choice, then the new value
        uniformly among the other choices.

        Raises:
            ConfigError: no dimension has a second choice (nothing to mutate).
        """
        parent = self.validate(config)
        open_dims = [d for d, c in self.dimensions.items() if len(c) > 1]
        if not open_dims:
            raise ConfigError(f"space {self.name!r} has a single configuration: nothing to mutate")
        dim = rng.choice(open_dims)
        new = rng.choice([c for c in self.dimensions[dim] if json.dumps(c) != json.dumps(parent[dim])])
        return {**parent, dim: new}, Mutation(dim, parent[dim], new)

    def to_dict(self) -> dict[str, Any]:
        """The name and dimensions (``build`` is code and is not serialised)."""
        return {"name": self.name, "dimensions": {d: list(c) for d, c in self.dimensions.items()}}


def build_digits_cnn(config: Config) -> nn.Module:
    """A digits CNN (input ``[N, 1, 8, 8]``, 10 logits) from a :func:`digits_cnn_space` configuration.

    ``depth`` conv blocks (conv ``kernel`` x ``kernel`` with "same" padding, batch norm, ReLU); the first
    block has ``width`` channels and the others ``2 * width``. The 8x8 maps are halved once: by a stride
    of 2 in the first conv (``downsample="stride"``: every block runs on 4x4 maps, about a quarter of
    the work) or by a 2x2 max-pool after the last block (``"pool"``). Then a hidden Linear layer of
    ``hidden`` units with ReLU, and the 10-way classifier. With :data:`DIGITS_BASELINE_CONFIG` this is
    layer for layer :func:`greenmeter.demo.digits.make_digits_cnn`. No two configurations build the same
    network.
    """
    from torch import nn

    depth, width, kernel = int(config["depth"]), int(config["width"]), int(config["kernel"])
    layers: list[nn.Module] = []
    channels = 1
    for i in range(depth):
        out = width if i == 0 else 2 * width
        stride = 2 if i == 0 and config["downsample"] == "stride" else 1
        layers += [nn.Conv2d(channels, out, kernel, stride=stride, padding=kernel // 2), nn.BatchNorm2d(out),
                   nn.ReLU()]
        channels = out
    if config["downsample"] == "pool":
        layers.append(nn.MaxPool2d(2))
    hidden = int(config["hidden"])
    layers += [nn.Flatten(), nn.Linear(channels * 4 * 4, hidden), nn.ReLU(), nn.Linear(hidden, 10)]
    return nn.Sequential(*layers)


def digits_cnn_space(
    *, depth: tuple[int, ...] = (1, 2, 3), width: tuple[int, ...] = (8, 16, 32, 64), kernel: tuple[int, ...] = (3, 5),
    hidden: tuple[int, ...] = (32, 64, 128), downsample: tuple[str, ...] = ("stride", "pool"),
) -> SearchSpace:
    """The bundled space of conv nets for the digits task (8x8 images, 10 classes): 144 configurations.

    Each argument narrows or widens one dimension (see :func:`build_digits_cnn` for what it means). The
    hand-designed baseline, :data:`DIGITS_BASELINE_CONFIG`, is in the default space.
    """
    bad = [v for v in downsample if v not in ("stride", "pool")]
    if bad:
        raise ConfigError(f"downsample choices must be 'stride' or 'pool', not {bad!r}")
    if any(k % 2 == 0 for k in kernel):
        raise ConfigError(f"kernel sizes must be odd (for 'same' padding), not {kernel!r}")
    return SearchSpace("digits-cnn-v2", {"depth": depth, "width": width, "kernel": kernel, "hidden": hidden,
                                         "downsample": downsample}, build_digits_cnn)
