"""The pretraining knobs, declared once.

A *knob* is a pretraining setting that an ablation varies (Table 1, Figs. 5/7). Each is declared here with
its one name (study config, ``mae pretrain --set``, ``settings.json``, runs.csv, tables), its type, its
choices or range, its default and its paper label. Everything else reads this module: the study planner
(:mod:`mae.study`), the stage config (:class:`mae.config.PretrainConfig`), the summary's column types, the
mapping between the paper's setting labels and our values (:mod:`mae.report.paper`, :mod:`mae.report.tables`).

The choices of the string knobs (``sampling``, ``target``, ``aug``, ``model``) are the names of the choice tables
(:mod:`mae.registry.choices`), plug-ins included; listing them imports no torch.

Two names differ on purpose, and only here: ``epochs`` is the runs.csv column ``pretrain_epochs`` (the
evaluation's own ``epochs`` is a column too), and two model constructor keywords keep the reference code's
names (``decoder_width`` -> ``decoder_embed_dim``, ``sampling`` -> ``sampler``: it also takes an instance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mae.errors import UserError
from mae.registry import choices as C


@dataclass
class Knob:
    name: str
    type: type
    default: Any
    help: str
    table: str = ""  # the choice table of its valid values (mae.registry.choices); "": a type and a range
    low: float | None = None  # inclusive unless low_open
    high: float | None = None  # inclusive unless high_open
    low_open: bool = False
    high_open: bool = False
    labels: dict[Any, str] = field(default_factory=dict)  # value -> the paper's label
    percent: bool = False  # the paper labels the value in percent (mask ratio 0.75 -> "75")
    column: str = ""  # runs.csv column (default: the name)
    model_key: str = ""  # keyword of mae.models.create_mae that takes it ("": not a model keyword)

    def __post_init__(self) -> None:
        self.column = self.column or self.name

    def options(self) -> list[Any] | None:
        """The valid values of a knob with choices (None: a range or a type)."""
        return C.names(self.table) if self.table else None

    def range_text(self) -> str:
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {lo}{self.low:g}, {self.high:g}{hi}"

    def check(self, value: Any, where: str) -> Any:
        """``value`` (normalised: ints accepted for floats) or a one-line :class:`UserError` naming it."""
        bad = f"{where}: bad value {value!r} for '{self.name}'"
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) != (self.type is bool) or not isinstance(value, self.type):
            raise UserError(f"{bad} (expected {self.type.__name__})")
        options = self.options()
        if options is not None and value not in options:
            raise UserError(f"{bad} (choose from {', '.join(map(str, options))})")
        if self.low is not None:
            x = float(value)
            below = x <= self.low if self.low_open else x < self.low
            above = self.high is not None and (x >= self.high if self.high_open else x > self.high)
            if not math.isfinite(x) or below or above:
                raise UserError(f"{bad} (must be {self.range_text()})")
        return value

    def label(self, value: Any) -> str:
        """The paper's label of ``value`` (the value itself where the paper uses our name)."""
        if self.percent:
            return str(int(round(float(value) * 100)))
        return self.labels.get(value, str(value))

    def parse_label(self, label: str) -> Any:
        """Inverse of :meth:`label`."""
        if self.percent:
            return int(label) / 100
        for value, text in self.labels.items():
            if text == label:
                return value
        return self.type(label)


#: every knob, in run-naming order (``mask_ratio-0.9_decoder_depth-1``)
KNOBS: dict[str, Knob] = {
    k.name: k
    for k in (
        Knob(
            "model",
            str,
            "mae_vit_micro_patch4",
            "named architecture (encoder + default decoder)",
            table="model",
        ),
        Knob(
            "mask_ratio",
            float,
            0.75,
            "fraction of patches removed (Fig. 5)",
            low=0.0,
            high=1.0,
            low_open=True,
            high_open=True,
            percent=True,
        ),
        Knob(
            "decoder_depth", int, None, "decoder blocks (Table 1a); null: the model's", low=1, model_key="decoder_depth"
        ),
        Knob(
            "decoder_width",
            int,
            None,
            "decoder width (Table 1b); null: the model's",
            low=1,
            model_key="decoder_embed_dim",
        ),
        Knob(
            "mask_token_in_encoder",
            bool,
            False,
            "encoder sees mask tokens (Table 1c)",
            labels={True: "encoder w/ [M]", False: "encoder w/o [M]"},
            model_key="mask_token_in_encoder",
        ),
        Knob(
            "target",
            str,
            "norm_pixel",
            "reconstruction target (Table 1d)",
            table="target",
            labels={"pixel": "pixel (w/o norm)", "norm_pixel": "pixel (w/ norm)", "pca": "PCA", "token": "dVAE token"},
            model_key="target",
        ),
        Knob(
            "aug",
            str,
            "crop_rand",
            "pretraining augmentation (Table 1e)",
            table="aug",
            labels={
                "none": "none",
                "crop_fixed": "crop, fixed size",
                "crop_rand": "crop, rand size",
                "crop_rand_jitter": "crop + color jit",
            },
        ),
        Knob(
            "sampling",
            str,
            "random",
            "mask sampling strategy (Table 1f)",
            table="sampling",
            model_key="sampler",
        ),
        Knob("epochs", int, 800, "pretraining epochs (Fig. 7)", low=1, column="pretrain_epochs"),
        Knob("seed", int, 0, "random seed", low=0),
    )
}
#: knobs whose value needs a fitted file (``target_path``) before pretraining
FITTED_TARGETS = ("pca", "token")


def knob(name: str, where: str = "knobs") -> Knob:
    if name not in KNOBS:
        raise UserError(f"{where}: unknown knob '{name}' (valid: {', '.join(KNOBS)})")
    return KNOBS[name]


def check(setting: dict[str, Any], where: str) -> dict[str, Any]:
    """Every key a known knob and every value valid; returns the normalised setting."""
    return {key: knob(key, where).check(value, where) for key, value in setting.items()}


def model_kwargs(values: Any) -> dict[str, Any]:
    """The knobs of ``values`` (an object with knob attributes) that the model constructor takes, by its
    keywords; unset (None) ones are left to the model's defaults."""
    return {
        k.model_key: getattr(values, k.name)
        for k in KNOBS.values()
        if k.model_key and getattr(values, k.name) is not None
    }


def columns() -> dict[str, Knob]:
    """runs.csv column -> knob."""
    return {k.column: k for k in KNOBS.values()}
