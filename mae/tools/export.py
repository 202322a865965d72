"""``mae export``: our weights in the formats other tools read: safetensors, timm and Hugging Face transformers.

    mae export results/runs/base/pretrain/checkpoint.pt --to safetensors --out base.safetensors
    mae export results/runs/base/pretrain/checkpoint.pt --to timm --out base-timm.safetensors
    mae export results/runs/base/pretrain/checkpoint.pt --to hf --out base-hf

The input is anything ``--init`` takes: a pretraining ``checkpoint.pt``, a fine-tuned ``model.pt``, an
``encoder.safetensors``, an official ``.pth``, a Hugging Face ViTMAE or timm folder, a URL, ``timm:NAME``.

- ``safetensors``: every weight of the input (a MAE's encoder and decoder; a classifier's ViT) in our names, its
  architecture (:func:`mae.models.checkpoint.architecture`) as JSON under the metadata key ``mae_architecture``.
- ``timm``: the encoder (with a classifier's ``fc_norm`` and ``head``) in timm's names, which are ours: a
  ``.safetensors`` file (any other suffix: a plain ``torch.save`` state dict). The ``timm.create_model`` keywords
  that load it (:func:`timm_call`) are printed, and recorded under ``timm`` in a safetensors file's architecture.
- ``hf``: a folder ``ViTMAEForPreTraining.from_pretrained`` (and ``ViTMAEModel``, the encoder) loads offline:
  ``model.safetensors`` in the Hub's names, ``preprocessor_config.json`` (our image size, ImageNet mean and std)
  and ``config.json``, written last. Pretraining checkpoints of a pixel or norm_pixel target only.

Every file is written atomically (a temp file renamed into place).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mae.errors import UserError

FORMATS = ("safetensors", "timm", "hf")
#: the timm architecture that carries an encoder timm has no name for (its keywords override the rest)
TIMM_CARRIER = "mae_vit_base_patch16"


def load(spec: str, model: str | None = None) -> tuple[dict, dict]:
    """(state dict, recorded settings) of an export's input; ``model`` names an architecture the input does not
    record."""
    from mae.models import model_spec, resolve_init
    from mae.models.checkpoint import extract_state_dict, read_checkpoint, recorded_config

    found = resolve_init(spec, "export")
    obj = found if isinstance(found, dict) else read_checkpoint(found, mmap=True, option="export")
    config = recorded_config(obj)
    if model:
        model_spec(model)  # a known name
        config["model"] = model
    return extract_state_dict(obj, str(spec)), config


def timm_call(arch: dict, file: str | Path | None = None) -> dict:
    """The keywords of ``timm.create_model`` that build the ViT of ``arch`` and load its weights from ``file``:
    the timm name of our model (``.mae`` for an encoder; a model timm does not name rides on ViT-B/16's), the
    architecture keywords that differ from that name's, the classes and pooling, and a pretrained config of our
    image size and normalisation."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from mae.models.encoder import encoder_kwargs
    from mae.models.interop import TIMM_NAMES

    ours = arch["model"] if arch["model"] in TIMM_NAMES else TIMM_CARRIER
    reference = {**encoder_kwargs(ours), "img_size": 224, "in_chans": 3}
    classes = arch.get("num_classes", 0)
    overlay = {
        "num_classes": classes,
        "input_size": [arch["in_chans"], arch["img_size"], arch["img_size"]],
        "mean": list(IMAGENET_DEFAULT_MEAN),
        "std": list(IMAGENET_DEFAULT_STD),
        **({"file": str(file)} if file is not None else {}),
    }
    return {
        "model_name": TIMM_NAMES[ours] + ("" if arch["kind"] == "classifier" else ".mae"),
        "pretrained": True,
        "pretrained_cfg_overlay": overlay,
        **{k: arch[k] for k in reference if arch[k] != reference[k]},
        "num_classes": classes,
        "global_pool": arch.get("global_pool", "token"),
    }


def _call_text(call: dict) -> str:
    return "timm.create_model(" + ", ".join(f"{k}={v!r}" for k, v in call.items()) + ")"


def export_safetensors(sd: dict, config: dict, out: Path, source: str) -> str:
    from mae.models.checkpoint import architecture, write_safetensors

    arch = architecture(sd, config, source)
    write_safetensors(out, sd, arch)
    return f"wrote {out}: {len(sd)} tensors of a {arch['model'] or 'ViT'} {arch['kind']} (architecture in its metadata)"


def export_timm(sd: dict, config: dict, out: Path, source: str) -> str:
    from mae.models.checkpoint import architecture, split_encoder_keys, write_safetensors
    from mae.utils.io import atomic_torch_save

    encoder, _ = split_encoder_keys(sd)
    arch = architecture(encoder, config, source)
    if out.suffix == ".safetensors":
        write_safetensors(out, encoder, {**arch, "timm": timm_call(arch)})
    else:
        atomic_torch_save(encoder, out)
    eps = arch["layer_norm_eps"]
    note = f" (note: the source ran its LayerNorms at eps {eps:g}; timm's ViT uses 1e-6)" if eps != 1e-6 else ""
    return f"wrote {out}; load it with {_call_text(timm_call(arch, out))}{note}"


def export_hf(sd: dict, config: dict, out: Path, source: str) -> str:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from mae.models.checkpoint import architecture, write_safetensors
    from mae.models.interop import to_hf
    from mae.utils.io import atomic_write_json

    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} is a file; --to hf writes a folder")
    arch = architecture(sd, config, source)
    state, hf_config = to_hf(sd, arch, source)
    size = arch["img_size"]
    write_safetensors(out / "model.safetensors", state)
    atomic_write_json(
        out / "preprocessor_config.json",
        {
            "image_processor_type": "ViTImageProcessor",
            "do_resize": True,
            "size": {"height": size, "width": size},
            "resample": 3,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(IMAGENET_DEFAULT_MEAN),
            "image_std": list(IMAGENET_DEFAULT_STD),
        },
    )
    atomic_write_json(out / "config.json", hf_config)  # last: a folder with its config.json is complete
    return f"wrote {out}/: ViTMAEForPreTraining.from_pretrained({str(out)!r}) (ViTMAEModel: the encoder)"


EXPORTERS: dict[str, Callable[[dict, dict, Path, str], str]] = {
    "safetensors": export_safetensors,
    "timm": export_timm,
    "hf": export_hf,
}


def export(spec: str | Path, to: str, out: str | Path, model: str | None = None) -> str:
    """Write the weights of ``spec`` as format ``to`` to ``out``; returns the line that says what was written."""
    if to not in EXPORTERS:
        raise UserError(f"--to: unknown format '{to}' (valid: {', '.join(FORMATS)})")
    sd, config = load(str(spec), model)
    return EXPORTERS[to](sd, config, Path(out), str(spec))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        help="what --init takes: checkpoint.pt, model.pt, encoder.safetensors, an "
        "official .pth, a Hugging Face or timm folder, a URL or timm:NAME",
    )
    parser.add_argument("--to", required=True, choices=FORMATS, help="the format to write")
    parser.add_argument("--out", required=True, help="the file to write (a folder for --to hf)")
    parser.add_argument("--model", help="our model name, for weights that do not record it (e.g. mae_vit_base_patch16)")


def main(args: argparse.Namespace) -> Any:
    print(export(args.checkpoint, args.to, args.out, args.model))
    return 0
