"""`adain train` and `adain eval`: the decoder's training (`models.train`) and the paper's
evaluation (`models.evaluate`). Every default is `TrainConfig`'s."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import DecoderOption, DeviceOption, EncoderOption, InputError, ModelOption
from models.config import Device, ModelName, Precision, TrainConfig


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("eval")(eval_command)


DEFAULTS = TrainConfig(Path(), Path())


def train_command(
    content_dir: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    style_dir: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    out_dir: Path = DEFAULTS.out_dir,
    encoder: Annotated[Path | None, typer.Option(help="Default: embedded VGG-19.")] = None,
    init_decoder: Annotated[
        Path | None,
        typer.Option(help="Decoder weights to start from when OUT_DIR has no checkpoint."),
    ] = None,
    steps: int = DEFAULTS.steps,
    batch_size: int = DEFAULTS.batch_size,
    lr: float = DEFAULTS.lr,
    lr_decay: float = DEFAULTS.lr_decay,
    style_weight: float = DEFAULTS.style_weight,
    content_photo_weight: Annotated[
        float,
        typer.Option(
            help="Not in the paper: weight of the "
            "content loss against the content photo's relu4_1 "
            "(beside the one against t)."
        ),
    ] = DEFAULTS.content_photo_weight,
    pixel_warmup: Annotated[
        int,
        typer.Option(
            help="First steps learn only to invert the "
            "encoder (pixel MSE); 0 = the paper's loss from the start."
        ),
    ] = DEFAULTS.pixel_warmup,
    resize: Annotated[int, typer.Option(help="Shorter side before cropping.")] = DEFAULTS.resize,
    crop: int = DEFAULTS.crop,
    max_minutes: Annotated[
        float, typer.Option(help="Wall-clock budget; 0 = none.")
    ] = DEFAULTS.max_minutes,
    checkpoint_every: int = DEFAULTS.checkpoint_every,
    sample_every: int = DEFAULTS.sample_every,
    workers: int = DEFAULTS.workers,
    seed: int = DEFAULTS.seed,
    device: Device = DEFAULTS.device,
    bf16: Annotated[
        bool | None,
        typer.Option(
            "--bf16/--fp32",
            help="bf16 autocast; default: "
            "on CUDA only. Use --bf16 on CPUs with AVX512-BF16 or AMX, where it is "
            "faster (see docs/training.md).",
            show_default=False,
        ),
    ] = DEFAULTS.bf16,
    identity_pixel_weight: Annotated[
        float, typer.Option(help="Not in the paper: weight of MSE(g(f(c)), c) in pixels.")
    ] = DEFAULTS.identity_pixel_weight,
    identity_feature_weight: Annotated[
        float,
        typer.Option(
            help="Not in the paper: weight of the MSEs of g(f(c)) vs c at relu1_1..relu4_1."
        ),
    ] = DEFAULTS.identity_feature_weight,
    ema_decay: Annotated[
        float,
        typer.Option(
            help="EMA of the decoder's weights, saved as decoder_ema.safetensors; 0 = off."
        ),
    ] = DEFAULTS.ema_decay,
) -> None:
    """Train the decoder (resumes from OUT_DIR/checkpoint.pt when present)."""
    from models.train import train

    config = TrainConfig(
        content_dir=content_dir,
        style_dir=style_dir,
        out_dir=out_dir,
        encoder=encoder,
        init_decoder=init_decoder,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        lr_decay=lr_decay,
        style_weight=style_weight,
        content_photo_weight=content_photo_weight,
        pixel_warmup=pixel_warmup,
        resize=resize,
        crop=crop,
        max_minutes=max_minutes,
        checkpoint_every=checkpoint_every,
        sample_every=sample_every,
        workers=workers,
        seed=seed,
        device=device,
        bf16=bf16,
        identity_pixel_weight=identity_pixel_weight,
        identity_feature_weight=identity_feature_weight,
        ema_decay=ema_decay,
    )
    step = train(config)
    typer.echo(f"stopped at step {step}; decoder in {out_dir / 'decoder.safetensors'}")


def eval_command(
    content_dir: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    style_dir: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    encoder: EncoderOption = None,
    decoder: DecoderOption = None,
    device: DeviceOption = Device.auto,
    precision: Annotated[
        Precision,
        typer.Option(
            help="The networks' dtype (see `adain stylize "
            "--help`); fp32 by default, so that figures compare."
        ),
    ] = Precision.fp32,
    size: Annotated[
        int,
        typer.Option(
            min=0,
            help="Shorter side of every image; 0 keeps it. "
            "512 is what `adain stylize` uses by default.",
        ),
    ] = 512,
    pairs: Annotated[int, typer.Option(min=0, help="Evaluate the first N pairs; 0 = all.")] = 100,
    held_out: Annotated[
        bool,
        typer.Option(
            "--held-out/--all-images",
            help="Only the images `adain train` holds out (5% by file name), or every image.",
        ),
    ] = True,
    sheet: Annotated[
        Path | None, typer.Option(help="Contact sheet PNG: content | style | output per row.")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Results as JSON.")] = None,
    peers: Annotated[
        list[Path] | None,
        typer.Option(
            "--peer",
            "--outputs",
            exists=True,
            file_okay=False,
            help="Another method's outputs on the same pairs (a "
            "folder with a manifest.json, as ../shared/peers/*), scored beside the "
            "decoder; repeatable.",
        ),
    ] = None,
    model: ModelOption = ModelName.full,
    lite_weights: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="With --model lite: the lite weights to score (a distillation run's "
            "lite_ema.safetensors or a snapshot); default the embedded ones.",
        ),
    ] = None,
) -> None:
    """Score the decoder with the paper's content and style losses on content x style pairs.

    Content loss: relu4_1 of the output vs the AdaIN target t, and vs the content photo's relu4_1.
    Style loss: channel mean and std at relu1_1..relu4_1, output vs style. Printed per pair and
    as means of ln-losses, beside the baseline 'content image as output' and each --peer's
    outputs on the same pairs. The losses are always measured through the full model's VGG
    (--encoder), also for --model lite, so that every method is measured alike.
    """
    import json
    from dataclasses import replace

    from models import evaluate
    from models.config import PipelineConfig
    from models.pipeline import build_pipeline

    try:
        plan = evaluate.EvaluationPlan.from_folders(
            content_dir,
            style_dir,
            size=size,
            pairs=pairs,
            held_out=held_out,
            peers=peers or [],
            sheet=sheet is not None,
        )
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from exc
    full = PipelineConfig(device, precision, encoder_path=encoder, decoder_path=decoder)
    pipeline = build_pipeline(replace(full, model=model, lite_path=lite_weights))
    loss_net = build_pipeline(full).net if model is not ModelName.full else None
    report = evaluate.run_evaluation(pipeline, plan, on_pair=typer.echo, loss_net=loss_net)
    typer.echo(report.summary_line())
    typer.echo(report.comparison_table())
    if sheet:
        sheet.parent.mkdir(parents=True, exist_ok=True)
        report.sheet.save(sheet)
        typer.echo(f"wrote {sheet}")
    if json_path:
        settings = {
            "content_dir": str(content_dir),
            "style_dir": str(style_dir),
            "size": size,
            "held_out": held_out,
            "encoder": str(encoder) if encoder else "embedded",
            "decoder": str(decoder) if decoder else "embedded",
            "model": model.value,
            "lite_weights": str(lite_weights) if lite_weights else "embedded",
        }
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_json(settings), indent=2))
        typer.echo(f"wrote {json_path}")
