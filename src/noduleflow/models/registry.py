"""The model registry: `create_model(name, **kwargs)` builds any registered architecture by name.

Each architecture file registers its builder with `@register_model(name, example_shapes=...)`.
`example_shapes` maps `spatial_dims` to the shape of one sample, (C, *spatial); the registry
test feeds such samples through every model, and tools like the bench use it as the default
input size. `dense` marks per-pixel outputs (B, num_classes, *spatial) instead of (B, num_classes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import nn

from noduleflow.errors import ConfigError


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: its builder, example input shapes per spatial_dims, output kind."""

    name: str
    build: Callable[..., nn.Module]
    example_shapes: Mapping[int, tuple[int, ...]]
    dense: bool = False


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, example_shapes: Mapping[int, tuple[int, ...]], dense: bool = False) -> Callable:
    """Class or function decorator that adds a builder to the registry under `name`."""

    def add(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise RuntimeError(f"model name {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, build, dict(example_shapes), dense)
        return build

    return add


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of `name`; an unknown name raises `ConfigError` listing the known ones."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model '{name}'", fix=f"Choose one of: {', '.join(list_models())}.")
    return _REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model `name` with constructor keyword arguments `kwargs`.

    Every classifier accepts `in_channels`, `num_classes`, `width` and `depth`; see each
    architecture's docstring for the rest. A keyword the architecture lacks raises `ConfigError`.
    """
    entry = model_entry(name)
    try:
        return entry.build(**kwargs)
    except TypeError as err:
        raise ConfigError(
            f"model '{name}' does not take these arguments ({err})",
            fix=f"Check the keyword arguments of {entry.build.__qualname__}.",
        ) from None
    except ValueError as err:  # an argument the architecture cannot build, e.g. an input_size its strides do not divide
        raise ConfigError(
            f"model '{name}' cannot be built: {err}", fix="Change the model settings named in the message."
        ) from None


def build_model(model_cfg, *, in_channels: int, num_classes: int) -> nn.Module:
    """The model a run's `model` config section describes (name, width, depth and, when set, input_size)."""
    extra = {"input_size": tuple(model_cfg.input_size)} if model_cfg.input_size else {}
    return create_model(
        model_cfg.name,
        in_channels=in_channels,
        num_classes=num_classes,
        width=model_cfg.width,
        depth=model_cfg.depth,
        **extra,
    )


def input_size_of(model: nn.Module) -> tuple[int, ...]:
    """The spatial size of the patch a patch classifier takes (its `input_size` attribute), e.g. (16, 32, 32)."""
    size = getattr(model, "input_size", None)
    if size is None:
        raise ConfigError(
            f"model {type(model).__name__} has no input_size", fix="Use a patch classifier such as nodule_net."
        )
    return tuple(int(s) for s in size)
