"""Training the lite model (`models.lite`) by distillation from the full embedded model.

Two phases in one resumable run:
1. Encoder (steps < encoder_steps): Collaborative Distillation's linear embedding loss (Wang et
   al., CVPR 2020): at each of relu1_1..relu4_1 a 1x1 conv maps the lite features into the full
   encoder's, loss = sum of the MSEs. The embeddings exist for training only.
2. Encoder and decoder: the encoder goes on with the embedding loss; the lite decoder inverts
   t_lite = AdaIN(f_lite(c), f_lite(s)) (detached: the decoder's losses do not move the
   encoder's space), with the paper's losses through the FULL VGG as the loss network: content
   (relu4_1 vs the full model's target t = AdaIN(f(c), f(s))), style (means and stds,
   relu1_1..relu4_1), content vs the photo's relu4_1 (as the embedded decoder's stage 3), and
   the teacher's answer: pixel MSE against the full model's output g(t).

Both start from the full networks pruned (`models.lite.prune_into`), the embeddings fitted by
least squares. An EMA of the lite weights is what gets committed; a small held-out evaluation
every `eval_every` steps writes the curve (`curve.jsonl`).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import evaluate, images
from models.acceleration import cpu_flags, native_bf16
from models.data import RandomCrops, infinite_batches, split
from models.lite import (
    DECODER_SOURCES,
    ENCODER_SOURCES,
    LITE_WIDTHS,
    LiteStyleTransfer,
    fit_conv,
    init_from,
    lite_state,
    load_lite,
    make_lite,
    outputs_of,
    save_lite,
)
from models.model import (
    RELU_TAPS,
    StyleTransfer,
    adaptive_instance_normalization,
    content_loss,
    style_loss,
)
from models.pipeline import Pipeline
from models.train import stop_on_signals
from models.weights import load_model, save_state

# The full encoder's taps the lite ones are distilled into: relu2_1, relu3_1, relu4_1.
TEACHER_TAPS = RELU_TAPS[1:]


@dataclass
class DistillConfig:
    content_dir: Path
    style_dir: Path
    out_dir: Path = Path("runs/lite")
    # The full model taught from: None = the embedded one (or the reference port's files).
    teacher_encoder: Path | None = None
    teacher_decoder: Path | None = None
    # Start from these lite weights (a committed model) instead of the head start; the
    # embeddings are fitted to them. Ignored when the run resumes from its checkpoint.
    init_weights: Path | None = None
    widths: tuple[int, int, int] = LITE_WIDTHS
    steps: int = 100_000
    encoder_steps: int = 0  # phase 1: the embedding loss alone
    batch_size: int = 4
    lr: float = 2e-4
    lr_decay: float = 5e-5  # lr / (1 + decay * step), the reference schedule
    embed_weight: float = 1.0
    content_weight: float = 1.0
    style_weight: float = 5.0
    content_photo_weight: float = 2.0
    teacher_pixel_weight: float = 50.0
    resize: int = 256
    crop: int = 96
    ema_decay: float = 0.995
    checkpoint_every: int = 50
    eval_every: int = 100
    eval_pairs: int = 8
    eval_size: int = 256
    workers: int = 1
    threads: int = 1
    # bf16 autocast; None: where it is native (GPUs, CPUs with AVX512-BF16 or AMX). Elsewhere
    # the CPU emulates it, many times slower than fp32 (LITE_MODEL_CARD.md).
    bf16: bool | None = None
    device: str = "cpu"
    seed: int = 0


def embeddings(widths: tuple[int, ...], teacher: StyleTransfer) -> nn.ModuleList:
    """One 1x1 conv per lite tap, lite channels -> the teacher's (relu2_1, relu3_1, relu4_1)."""
    teacher_widths = [teacher.encoder[tap - 1].out_channels for tap in TEACHER_TAPS]
    return nn.ModuleList(nn.Conv2d(w, t, 1) for w, t in zip(widths, teacher_widths, strict=True))


@torch.no_grad()
def fit_embedding(embed: nn.Conv2d, student: Tensor, teacher: Tensor) -> None:
    """Least squares: the 1x1 conv (with bias) that best maps student to teacher features."""
    fit_conv(embed, student.float(), teacher.float(), samples=65_536)


@torch.no_grad()
def init_from_teacher(
    student: LiteStyleTransfer, embeds: nn.ModuleList, teacher: StyleTransfer, batch: Tensor
) -> None:
    """Fit the lite encoder to the full one's pre-activations layer by layer, then the
    embeddings, then the lite decoder to the full decoder's on each one's AdaIN targets
    (first half of `batch` contents, second half styles): `models.lite.init_from`."""
    generator = torch.Generator().manual_seed(0)
    full = outputs_of(teacher.encoder, batch, set(ENCODER_SOURCES.values()))
    init_from(
        student.encoder,
        batch,
        {index: full[source] for index, source in ENCODER_SOURCES.items()},
        generator=generator,
    )
    lite_taps = student.encode_taps(batch)
    taps = teacher.encode_taps(batch)[1:]
    for embed, lite, full_tap in zip(embeds, lite_taps, taps, strict=True):
        fit_embedding(embed, lite, full_tap)
    half = batch.shape[0] // 2

    def target(feats: Tensor) -> Tensor:
        return adaptive_instance_normalization(feats[:half], feats[half : 2 * half])

    teacher_target = target(taps[-1].float())
    wanted_sources = {source for source in DECODER_SOURCES.values() if source is not None}
    decoded = outputs_of(
        teacher.decoder, teacher_target, wanted_sources | {len(teacher.decoder) - 1}
    )
    image = decoded[len(teacher.decoder) - 1]
    pad_h, pad_w = image.shape[-2] % 2, image.shape[-1] % 2
    image = F.pad(image, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else image
    init_from(
        student.decoder,
        target(lite_taps[-1].float()),
        {
            index: F.pixel_unshuffle(image, 2) if source is None else decoded[source]
            for index, source in DECODER_SOURCES.items()
        },
        generator=generator,
    )


def embedding_loss(embeds: nn.ModuleList, lite_taps: list[Tensor], taps: list[Tensor]) -> Tensor:
    return sum(
        F.mse_loss(embed(lite).float(), full.float())
        for embed, lite, full in zip(embeds, lite_taps, taps, strict=True)
    )  # type: ignore[return-value]


class Distiller:
    def __init__(self, config: DistillConfig) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.bf16 = (
            (self.device.type == "cuda" or native_bf16(cpu_flags()))
            if config.bf16 is None
            else config.bf16
        )
        self.teacher = load_model(config.teacher_encoder, config.teacher_decoder, self.device)
        self.teacher.requires_grad_(False)
        self.student = make_lite(config.widths).to(self.device, memory_format=torch.channels_last)
        self.student.requires_grad_(True)
        self.embeds = embeddings(config.widths, self.teacher).to(self.device)
        # Everything trained, as one module: one optimiser, one EMA, one checkpoint entry.
        self.trained = nn.ModuleDict(
            {
                "encoder": self.student.encoder,
                "decoder": self.student.decoder,
                "embeds": self.embeds,
            }
        )
        self.optimizer = torch.optim.Adam(self.trained.parameters(), lr=config.lr)
        self.ema = torch.optim.swa_utils.AveragedModel(
            self.trained, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay)
        )
        self.step = 0
        self.checkpoint_path = config.out_dir / "checkpoint.pt"
        config.out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        if self.checkpoint_path.is_file():
            self.resume()
        else:
            if config.init_weights is None:
                init_from_teacher(self.student, self.embeds, self.teacher, self.init_batch())
            else:
                self.init_from_weights(config.init_weights)
            self.ema.module.load_state_dict(self.trained.state_dict())

    @torch.no_grad()
    def init_from_weights(self, path: Path) -> None:
        """The student from a lite model's file, the embeddings fitted to its features."""
        saved = load_lite(path, self.device)  # other widths than the run's: a size mismatch
        self.student.encoder.load_state_dict(saved.encoder.state_dict())
        self.student.decoder.load_state_dict(saved.decoder.state_dict())
        batch = self.init_batch()
        lite_taps = self.student.encode_taps(batch)
        for embed, lite, full in zip(
            self.embeds, lite_taps, self.teacher.encode_taps(batch)[1:], strict=True
        ):
            fit_embedding(embed, lite, full)

    def init_batch(self) -> Tensor:
        """4 training contents then 4 training styles, centre crops at the training's resize."""
        rng = random.Random(self.config.seed)
        paths = [
            path
            for folder in (self.config.content_dir, self.config.style_dir)
            for path in rng.sample(split(folder, held_out=False), 4)
        ]
        size = self.config.resize
        return torch.cat([images.load(path, size, crop=True) for path in paths]).to(self.device)

    def resume(self) -> None:
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        self.trained.load_state_dict(state["trained"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"].cpu())
        random.seed(self.config.seed + self.step)
        for name in ("log.jsonl", "curve.jsonl"):  # a killed run redoes the steps after it
            log = self.config.out_dir / name
            if log.is_file():
                kept = [
                    line
                    for line in log.read_text().splitlines()
                    if json.loads(line)["step"] <= self.step
                ]
                log.write_text("".join(line + "\n" for line in kept))

    def save_checkpoint(self) -> None:
        """Atomic: a run killed mid-write leaves the previous checkpoint intact."""
        state = {
            "trained": self.trained.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict(),
            "step": self.step,
            "torch_rng": torch.get_rng_state(),
        }
        partial = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, partial)
        partial.replace(self.checkpoint_path)
        save_lite(self.student, self.config.out_dir / "lite.safetensors")
        save_lite(self.ema_model(), self.config.out_dir / "lite_ema.safetensors")

    def ema_model(self) -> StyleTransfer:
        net = make_lite(self.config.widths).to(self.device, memory_format=torch.channels_last)
        net.encoder.load_state_dict(self.ema.module["encoder"].state_dict())
        net.decoder.load_state_dict(self.ema.module["decoder"].state_dict())
        return net.eval().requires_grad_(False)

    def learning_rate(self) -> float:
        return self.config.lr / (1.0 + self.config.lr_decay * self.step)

    def losses(self, content: Tensor, style: Tensor) -> dict[str, Tensor]:
        """Every loss of one batch by name (unweighted)."""
        config, teacher = self.config, self.teacher
        both = torch.cat([content, style])
        with torch.no_grad():
            taps = teacher.encode_taps(both)
        lite_taps = self.student.encode_taps(both)
        losses = {"embed": embedding_loss(self.embeds, lite_taps, taps[1:])}
        if self.step < config.encoder_steps:
            return losses
        n = content.shape[0]
        content_feat, style_taps = taps[-1][:n].float(), [tap[n:] for tap in taps]
        with torch.no_grad():
            lite_feat = lite_taps[-1].detach().float()
            lite_target = adaptive_instance_normalization(lite_feat[:n], lite_feat[n:])
            target = adaptive_instance_normalization(content_feat, style_taps[-1].float())
            answer = teacher.decode(target, content.shape[-2:])
        output = self.student.decoder(lite_target.to(self.student.dtype))
        output = output[..., : content.shape[-2], : content.shape[-1]]
        output_taps = teacher.encode_taps(output)
        return losses | {
            "content": content_loss(output_taps[-1], target),
            "content_photo": content_loss(output_taps[-1], content_feat),
            "style": style_loss(output_taps, style_taps),
            "teacher_pixel": F.mse_loss(output.float(), answer),
        }

    def train_step(self, content: Tensor, style: Tensor) -> dict[str, float]:
        config = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        weights = {
            "embed": config.embed_weight,
            "content": config.content_weight,
            "content_photo": config.content_photo_weight,
            "style": config.style_weight,
            "teacher_pixel": config.teacher_pixel_weight,
        }
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        with autocast:
            losses = self.losses(content, style)
            loss = sum(weights[name] * value for name, value in losses.items())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        self.optimizer.step()
        self.ema.update_parameters(self.trained)
        self.step += 1
        return {name: value.item() for name, value in losses.items()}

    def evaluate(self) -> dict[str, object]:
        """Means of ln losses of the EMA weights on the first held-out pairs (`adain eval`'s
        order and measures, the full VGG as the loss network)."""
        config = self.config
        net = self.ema_model()
        pairs = list(
            evaluate.ordered_pairs(
                split(config.content_dir, held_out=True), split(config.style_dir, held_out=True)
            )
        )
        results = []
        for content_path, style_path in pairs[: config.eval_pairs]:
            content = images.load(content_path, config.eval_size).to(self.device)
            style = images.load(style_path, config.eval_size).to(self.device)
            with torch.inference_mode():
                output = Pipeline(net).stylize(content, [style])
            out, baseline = evaluate.measure(
                self.teacher, content, style, torch.cat([output, content])
            )
            results.append(evaluate.PairResult(content_path.name, style_path.name, out, baseline))
        summary = evaluate.summarise(results)
        return {
            "step": self.step,
            "size": config.eval_size,
            "pairs": summary.pairs,
            **asdict(summary.mean_ln),
        }

    def batches(self, folder: Path) -> torch.utils.data.DataLoader[Tensor]:
        config = self.config
        dataset = RandomCrops(split(folder, held_out=False), config.resize, config.crop)
        return infinite_batches(dataset, config.batch_size, config.seed + self.step, config.workers)

    def run(self) -> int:
        config = self.config
        torch.set_num_threads(config.threads)
        (config.out_dir / "config.json").write_text(json.dumps(asdict(config), default=str))
        log = (config.out_dir / "log.jsonl").open("a")
        curve = (config.out_dir / "curve.jsonl").open("a")
        snapshots = config.out_dir / "snapshots"
        snapshots.mkdir(exist_ok=True)
        pairs = zip(self.batches(config.content_dir), self.batches(config.style_dir), strict=False)
        started = time.monotonic()
        stop = stop_on_signals()
        try:
            while self.step < config.steps and not stop.is_set():
                content, style = (
                    batch.to(self.device, memory_format=torch.channels_last)
                    for batch in next(pairs)
                )
                losses = self.train_step(content, style)
                record = {
                    "step": self.step,
                    **losses,
                    "lr": self.learning_rate(),
                    "seconds": round(time.monotonic() - started, 2),
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
                if self.step % 10 == 0:
                    print(json.dumps(record), flush=True)
                if self.step % config.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.step % config.eval_every == 0:
                    point = self.evaluate()
                    print(json.dumps(point), flush=True)
                    curve.write(json.dumps(point) + "\n")
                    curve.flush()
                    save_state(
                        lite_state(self.ema_model()),
                        snapshots / f"lite_ema_{self.step:06d}.safetensors",
                        half=True,
                    )
        finally:
            self.save_checkpoint()
            log.close()
            curve.close()
        return self.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in fields(DistillConfig):
        default = field.default
        if field.name == "widths":
            parser.add_argument("--widths", type=int, nargs=3, default=list(default))
        elif isinstance(default, bool) or field.name == "bf16":
            parser.add_argument(
                f"--{field.name.replace('_', '-')}",
                action=argparse.BooleanOptionalAction,
                default=default,
            )
        else:
            paths = ("_dir", "_encoder", "_decoder", "_weights")
            kind = Path if field.name.endswith(paths) else type(default)
            required = field.name in ("content_dir", "style_dir")
            parser.add_argument(
                f"--{field.name.replace('_', '-')}",
                type=kind,
                default=None if required else default,
                required=required,
            )
    args = vars(parser.parse_args())
    args["widths"] = tuple(args["widths"])
    step = Distiller(DistillConfig(**args)).run()
    print(f"stopped at step {step}")


if __name__ == "__main__":
    main()
