"""The paper's controls of one stylization (`StyleControls`), checked in one place,
`check_controls`, wherever they enter: the /stylize and /jobs forms, the command's options, live
settings, and a stored job's record. Everything inside trusts the value it returns.

A bad value is an `InvalidInputError` naming the field, worded the same from every entry point
(the command shows the field as its option: `alpha` -> `--alpha`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from media.defaults import DEFAULT_SIZE, MAX_STYLES
from models.errors import InvalidInputError
from models.model import Masks, StyleMix, check_mask_count, normalise_mix_weights


class StyleControls(BaseModel):
    """weights: one per style, normalised to sum 1; masks: how many (none, one per style, or
    one binary mask for two styles); model: a network the process loaded, None its default."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    weights: tuple[float, ...]
    masks: int = Field(0, ge=0)
    alpha: float = Field(1.0, ge=0.0, le=1.0, allow_inf_nan=False)
    preserve_color: bool = False
    content_size: int = Field(DEFAULT_SIZE, ge=0)
    style_size: int = Field(DEFAULT_SIZE, ge=0)
    crop: bool = False
    model: str | None = None

    @property
    def weight_tensor(self) -> Tensor:
        return torch.tensor(self.weights, dtype=torch.float32)

    def mix(self, statistics: Sequence[tuple[Tensor, Tensor]], masks: Masks | None) -> StyleMix:
        """The styles' relu4_1 (mean, std), in order, mixed as these controls say: what
        /stylize and a batch job's images are stylized with."""
        return StyleMix(
            torch.cat([mean for mean, _ in statistics]),
            torch.cat([std for _, std in statistics]),
            self.weight_tensor,
            masks,
            self.alpha,
        )


def check_controls(
    *,
    styles: int,
    masks: int = 0,
    weights: Sequence[float] | Tensor | None = None,
    models: Sequence[str] | None = None,
    alpha: float = 1.0,
    preserve_color: bool = False,
    content_size: int = DEFAULT_SIZE,
    style_size: int = DEFAULT_SIZE,
    crop: bool = False,
    model: str | None = None,
    max_styles: int | None = MAX_STYLES,
) -> StyleControls:
    """The controls for `styles` styles, checked: the style count first (cheap, before any
    upload is read), the mask count, the weights (normalised), the model among `models` (the
    loaded ones, the default first: None names it; None: not checked here), then each value's
    range. `max_styles` None: any number (the command's images)."""
    if styles < 1 or (max_styles is not None and styles > max_styles):
        raise InvalidInputError(
            f"got {styles} styles; send 1 to {max_styles} (style files and style_ids together)",
            "style",
        )
    check_mask_count(masks, styles)
    normalised = normalise_mix_weights(weights, styles)
    if models is not None:
        model = check_model(model, models)
    try:
        return StyleControls(
            weights=tuple(normalised.tolist()),
            masks=masks,
            alpha=alpha,
            preserve_color=preserve_color,
            content_size=content_size,
            style_size=style_size,
            crop=crop,
            model=model,
        )
    except ValidationError as exc:
        raise invalid(exc) from None


def check_model(model: str | None, loaded: Sequence[str]) -> str:
    """The model a request names (None: the default, the first loaded) if it is loaded here;
    else a clear error naming the field."""
    name = model or loaded[0]
    if name not in loaded:
        raise InvalidInputError(
            f"model: {name[:40]!r} is not loaded here; choose one of {', '.join(loaded)} "
            "(ADAIN_MODELS)",
            "model",
        )
    return name


def invalid(exc: ValidationError, secrets: Collection[str] = ()) -> InvalidInputError:
    """A pydantic error as the domain's: the first field at fault, its message and the value
    (not shown for the `secrets` fields)."""
    error = exc.errors()[0]
    field = next((str(p) for p in error["loc"] if isinstance(p, str)), "settings")
    shown = "the key" if field in secrets else repr(error.get("input"))[:80]
    return InvalidInputError(f"{field}: {error['msg']} (got {shown})", field)


def bounds(field: str) -> dict[str, Any]:
    """The range of a control as a JSON schema says it (`minimum`, `maximum`), from its one
    definition above: what the forms document without checking it a second time."""
    schema = StyleControls.model_json_schema()["properties"][field]
    return {key: schema[key] for key in ("minimum", "maximum") if key in schema}
