"""The model registry and ``build_model``.

Each registry entry is a builder ``builder(params, input_shape, num_classes) -> ImageClassifier``
(prefix entries also get ``name=`` the part after the prefix), where ``params`` is the entry's
validated parameter model, a :class:`ModelParams`. Every model it returns has

* ``model.features``: ``nn.Module``, images ``(N, C, H, W)`` -> feature tensor,
* ``model.head``: ``nn.Module``, features -> logits ``(N, num_classes)``,
* ``model.forward(x) == head(features(x))``, followed by ``softmax(dim=1)`` when
  ``model.softmax_output`` is true (the seeds' output layer; see :func:`build_model`),
* the hooks ``init_from_data`` and ``on_epoch_start`` of :class:`ImageClassifier`.

Layer sizes after the convolutions are inferred with a dry run on a zero tensor of the input
shape, so any image size works as long as the pooling layers leave at least one pixel.
"""

from __future__ import annotations

import json
import types
import warnings
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Mapping, Union, get_args, get_origin

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import ModelConfig, entry_params, validation_message
from ..errors import UserError
from ..limits import check_fits
from ..registry import Registry
from .layers import INITS, ImageClassifier, InitName

MODELS: Registry[Callable[..., ImageClassifier]] = Registry("model")


# Bounds of the sizes users give: far past any image classifier that fits a machine, and small
# enough that an unchecked 10^30 never reaches the allocator (the memory estimate then refuses
# what fits the bounds but not the machine).
Width = Annotated[int, Field(gt=0, le=65_536)]  # channels, units of a layer
Kernel = Annotated[int, Field(gt=0, le=1_024)]  # a conv kernel's side, in pixels
Depth = 1_000  # layers or blocks in a list


class ModelParams(BaseModel):
    """The keys every model takes; each entry's parameter model extends it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    softmax_output: bool = Field(
        False, description="apply softmax in the output layer (seeds 000/002); cross-entropy then sees probabilities"
    )
    init: InitName = Field("default", description="weight init of Conv2d/Linear layers: default, kaiming or xavier")


SOFTMAX_WARNING = (
    "model.softmax_output = true: the output layer applies softmax, so the cross-entropy loss "
    "(which applies log-softmax itself) sees probabilities instead of logits. This reproduces "
    "seeds 000/002 but squashes the gradients and usually trains slower and worse; metrics use "
    "the model's output directly as class probabilities. Set softmax_output = false for logits."
)


def _check_input_shape(input_shape: Any) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"input_shape must be (channels, height, width) of positive sizes, got {input_shape!r}.")
    return shape  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelSize:
    """What a model will hold, known before it is built: ``parameters`` (values) and, when a forward
    pass on the meta device works for it, ``activations``: the values all its layers output for one
    image (what a training batch keeps for the backward pass, per image)."""

    parameters: int
    activations: int | None


def _resolve(cfg_model: ModelConfig | Mapping[str, Any], input_shape: Any,
             num_classes: int) -> tuple[ModelConfig, Any, tuple[int, int, int], dict[str, Any]]:
    """(config, the entry, validated input shape, the builder's keyword arguments): every check on
    the model's keys, before anything is built."""
    if not isinstance(cfg_model, ModelConfig):
        try:
            cfg_model = ModelConfig.model_validate(dict(cfg_model))
        except ValidationError as e:
            raise UserError(validation_message(e, "model config", "model")) from None
    input_shape = _check_input_shape(input_shape)
    if int(num_classes) < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}.")
    entry = MODELS.entry(cfg_model.name, "model.name")
    try:
        params = entry_params(cfg_model, MODELS)
    except ValidationError as e:
        keys = ", ".join(entry.params.model_fields) if entry.params is not None else ""
        raise UserError(
            validation_message(e, "model config", "model")[:-1] + f". Keys of model {cfg_model.name!r}: name, {keys}."
        ) from None
    kwargs = {"name": cfg_model.name[len(entry.name):]} if entry.prefix else {}
    return cfg_model, entry, input_shape, {"params": params, **kwargs}


def model_size(cfg_model: ModelConfig | Mapping[str, Any], input_shape: tuple[int, int, int],
               num_classes: int) -> ModelSize | None:
    """The :class:`ModelSize` of a model, measured by building it on PyTorch's meta device (shapes
    only, no memory) and running one image through it there. None when the model cannot be built
    that way (some library models); bad keys raise UserError as in :func:`build_model`."""
    cfg_model, entry, shape, kw = _resolve(cfg_model, input_shape, num_classes)
    params = kw.pop("params")
    outputs: list[int] = []
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = entry.obj(params, shape, int(num_classes), **kw)
            n_params = sum(p.numel() for p in model.parameters())
            leaves = [m for m in model.modules() if not any(True for _ in m.children())]
            hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o.numel() if isinstance(o, torch.Tensor)
                                                                            else 0)) for m in leaves]
            try:
                model.eval()(torch.zeros(1, *shape))
                acts: int | None = sum(outputs)
            except Exception:  # a layer without a meta implementation: the parameters are still known
                acts = None
            for h in hooks:
                h.remove()
    except UserError:
        raise
    except Exception:
        return None
    return ModelSize(int(n_params), acts)


def build_model(
    cfg_model: ModelConfig | Mapping[str, Any], input_shape: tuple[int, int, int], num_classes: int
) -> ImageClassifier:
    """Build the model named by ``cfg_model.name`` for images of ``input_shape`` = (C, H, W).

    ``cfg_model`` is a :class:`~cnnlab.config.ModelConfig` (or a dict like ``{"name": "cnn",
    "channels": [32, 64]}``). Its extra keys are validated against the entry's parameter model
    (bad keys raise ``UserError``). A model whose parameters alone would not fit in the memory
    available is refused before it is built (:func:`model_size`). Applies ``init`` and sets
    ``model.softmax_output``; when that is true a ``UserWarning`` explains that the output layer
    applies softmax before cross-entropy. Returns an :class:`ImageClassifier` with ``features``
    and ``head``.
    """
    cfg_model, entry, input_shape, kw = _resolve(cfg_model, input_shape, num_classes)
    size = model_size(cfg_model, input_shape, num_classes)
    if size is not None:
        check_fits(4 * size.parameters, f"model {cfg_model.name!r} with {size.parameters:,} parameters",
                   "make it smaller (fewer or narrower layers, a smaller data.image_size for models whose head grows "
                   "with the image)")
    params = kw.pop("params")
    try:
        model = entry.obj(params, input_shape, int(num_classes), **kw)
    except (MemoryError, OverflowError, RuntimeError) as e:
        text = " ".join(str(e).split())
        if not isinstance(e, (MemoryError, OverflowError)) and not any(
                w in text for w in ("allocate", "overflow", "out of memory", "Storage size")):
            raise
        raise UserError(f"model {cfg_model.name!r} does not fit in memory ({text[:160] or type(e).__name__}); make it "
                        f"smaller (fewer or narrower layers).") from None
    if not isinstance(model, ImageClassifier):
        raise TypeError(f"model {cfg_model.name!r}: its builder returned a {type(model).__name__}, not an ImageClassifier")
    init = INITS[params.init] if isinstance(params, ModelParams) else None
    if init is not None:
        model.apply(init)
    model.softmax_output = isinstance(params, ModelParams) and params.softmax_output
    if model.softmax_output:
        warnings.warn(SOFTMAX_WARNING, UserWarning, stacklevel=2)
    return model


def _type_str(ann: Any) -> str:
    """A short, TOML-flavoured type name: ``list[int]``, ``"max" | "avg"``, ``bool``."""
    origin, args = get_origin(ann), get_args(ann)
    if origin is Annotated:
        return _type_str(args[0])
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):  # an optional key shows its type; its default says "unset"
        return " | ".join(_type_str(a) for a in args if a is not type(None))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_str(a) for a in args)}]"
    return getattr(ann, "__name__", str(ann))


def describe_models() -> list[tuple[str, str, dict[str, tuple[str, Any]]]]:
    """For ``cnnlab models``: ``(name, summary, {key: (type, default)})`` per registry entry;
    prefix entries are named like ``torchvision:<name>``."""
    rows = []
    for entry in MODELS:
        name = entry.name + "<name>" if entry.prefix else entry.name
        keys: dict[str, tuple[str, Any]] = {}
        if entry.params is not None:
            for key, field in entry.params.model_fields.items():
                default = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
                keys[key] = (_type_str(field.annotation), default)
        rows.append((name, entry.summary, keys))
    return rows
