"""Training of the decoder (the encoder stays fixed), as the paper and the reference `train.py`.

loss = content_loss(f(g(t)), t) + style_weight * style_loss(f(g(t)), f(s)), t = AdaIN(f(c), f(s)).
Resumable: the checkpoint holds the decoder, the optimiser, the step and the RNG state, and a
wall-clock budget ends a run cleanly with a checkpoint.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import save_image
from tqdm import tqdm

from models.config import CompileMode, PipelineConfig, Precision, TrainConfig
from models.data import RandomCrops, infinite_batches, split
from models.model import (
    StyleTransfer,
    adaptive_instance_normalization,
    content_loss,
    style_loss,
)
from models.pipeline import build_pipeline
from models.weights import save_state

__all__ = ["TrainConfig", "Trainer", "train"]


def reconstruction_loss(net: StyleTransfer, content: Tensor) -> Tensor:
    """MSE between the content and its decoded relu4_1 features: the warm start's loss."""
    with torch.no_grad():
        content_feat = net.encode(content)
    output = net.decoder(content_feat)[..., : content.shape[-2], : content.shape[-1]]
    return F.mse_loss(output.float(), content.float())


def identity_losses(net: StyleTransfer, content: Tensor) -> tuple[Tensor, Tensor]:
    """(pixel, feature) MSEs between g(f(c)) and c: the content stylized with itself."""
    with torch.no_grad():
        content_taps = net.encode_taps(content)
    output = net.decoder(content_taps[-1])[..., : content.shape[-2], : content.shape[-1]]
    output_taps = net.encode_taps(output)
    pixel = F.mse_loss(output.float(), content.float())
    feature = sum(
        F.mse_loss(out.float(), ref.float())
        for out, ref in zip(output_taps, content_taps, strict=True)
    )
    return pixel, feature


def training_losses(net: StyleTransfer, content: Tensor, style: Tensor) -> dict[str, Tensor]:
    """The decoder's losses on one batch by name: the reference `net.py`'s content (relu4_1 vs
    the AdaIN target t) and style, and content_photo (relu4_1 vs the content photo's), which
    the paper does not train with but which costs nothing more to compute."""
    with torch.no_grad():
        style_taps = net.encode_taps(style)
        content_feat = net.encode(content).float()
        target = adaptive_instance_normalization(content_feat, style_taps[-1].float())
    output = net.decoder(target.to(net.dtype))
    output_taps = net.encode_taps(output)
    return {
        "content": content_loss(output_taps[-1], target),
        "content_photo": content_loss(output_taps[-1], content_feat),
        "style": style_loss(output_taps, style_taps),
    }


class Trainer:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        torch.manual_seed(config.seed)  # the fresh decoder's initialisation
        # fp32 weights (bf16 is autocast's), eager: the optimiser steps the decoder's own weights.
        pipeline = build_pipeline(
            PipelineConfig(config.device, Precision.fp32, CompileMode.off,
                           encoder_path=config.encoder, decoder_path=config.init_decoder),
            untrained_decoder=config.init_decoder is None,
        )
        self.net = pipeline.net.train()
        self.device = pipeline.device
        use_bf16 = self.device.type == "cuda" if config.bf16 is None else config.bf16
        self.autocast = (
            partial(torch.autocast, self.device.type, dtype=torch.bfloat16) if use_bf16
            else nullcontext
        )
        self.optimizer = torch.optim.Adam(self.net.decoder.parameters(), lr=config.lr)
        self.ema = (
            torch.optim.swa_utils.AveragedModel(
                self.net.decoder,
                multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay),
            )
            if config.ema_decay else None
        )
        self.step = 0
        self.checkpoint_path = config.out_dir / "checkpoint.pt"
        config.out_dir.mkdir(parents=True, exist_ok=True)
        if self.checkpoint_path.is_file():
            self.resume()
        else:
            torch.manual_seed(config.seed)
            random.seed(config.seed)

    def resume(self) -> None:
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        self.net.decoder.load_state_dict(state["decoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        elif self.ema:
            self.ema.module.load_state_dict(self.net.decoder.state_dict())
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"].cpu())
        random.seed(self.config.seed + self.step)
        self.truncate_log()

    def truncate_log(self) -> None:
        """Drop log records of steps after the checkpoint: a killed run redoes them."""
        log = self.config.out_dir / "log.jsonl"
        if log.is_file():
            kept = [line for line in log.read_text().splitlines()
                    if json.loads(line)["step"] <= self.step]
            log.write_text("".join(line + "\n" for line in kept))

    def save_checkpoint(self) -> None:
        """Atomic: a run killed mid-write leaves the previous checkpoint intact."""
        state = {
            "decoder": self.net.decoder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "torch_rng": torch.get_rng_state(),
            **({"ema": self.ema.state_dict()} if self.ema else {}),
        }
        partial = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, partial)
        partial.replace(self.checkpoint_path)
        decoder_path = self.config.out_dir / "decoder.safetensors"
        save_state(self.net.decoder.state_dict(), decoder_path, half=True)
        if self.ema:
            ema_path = self.config.out_dir / "decoder_ema.safetensors"
            save_state(self.ema.module.state_dict(), ema_path, half=True)

    def learning_rate(self) -> float:
        return self.config.lr / (1.0 + self.config.lr_decay * self.step)

    def train_step(self, content: Tensor, style: Tensor) -> dict[str, float]:
        """One optimiser step; returns its losses by name (before weighting)."""
        config = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        if config.pixel_warmup and self.step == config.pixel_warmup:
            # Adam's second moments have learnt the pixel loss's far smaller gradients: kept, the
            # first paper-loss updates would be many times lr and kill most decoder ReLUs.
            self.optimizer.state.clear()
        with self.autocast():
            if self.step < config.pixel_warmup:
                loss = reconstruction_loss(self.net, content)
                losses = {"pixel": loss}
            else:
                losses = training_losses(self.net, content, style)
                loss = (config.content_weight * losses["content"]
                        + config.content_photo_weight * losses["content_photo"]
                        + config.style_weight * losses["style"])
                if config.identity_pixel_weight or config.identity_feature_weight:
                    pixel, feature = identity_losses(self.net, content)
                    loss = (loss + config.identity_pixel_weight * pixel
                            + config.identity_feature_weight * feature)
                    losses |= {"identity_pixel": pixel, "identity_feature": feature}
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema:
            self.ema.update_parameters(self.net.decoder)
        self.step += 1
        return {name: value.item() for name, value in losses.items()}

    def save_samples(self, content: Tensor, style: Tensor) -> None:
        with torch.no_grad():
            content_feat, style_feat = self.net.encode(content), self.net.encode(style)
            target = adaptive_instance_normalization(content_feat, style_feat)
            output = self.net.decode(target, content.shape[-2:])
        grid = torch.cat([content.float(), style.float(), output])
        path = self.config.out_dir / "samples" / f"step_{self.step:07d}.jpg"
        path.parent.mkdir(exist_ok=True)
        save_image(grid, path, nrow=content.shape[0])

    def batches(self, folder: Path) -> torch.utils.data.DataLoader[Tensor]:
        config = self.config
        dataset = RandomCrops(split(folder, held_out=False), config.resize, config.crop)
        return infinite_batches(dataset, config.batch_size, config.seed + self.step, config.workers)

    def run(self) -> int:
        config = self.config
        deadline = time.monotonic() + config.max_minutes * 60 if config.max_minutes else None
        log = (config.out_dir / "log.jsonl").open("a")
        (config.out_dir / "config.json").write_text(json.dumps(asdict(config), default=str))
        pairs = zip(self.batches(config.content_dir), self.batches(config.style_dir), strict=False)
        progress = tqdm(total=config.steps, initial=self.step, desc="train", dynamic_ncols=True)
        started = time.monotonic()
        stop = stop_on_signals()
        try:
            while self.step < config.steps and not stop.is_set():
                if deadline and time.monotonic() > deadline:
                    break
                content, style = next(pairs)
                content, style = (
                    batch.to(self.device, non_blocking=True, memory_format=torch.channels_last)
                    for batch in (content, style)
                )
                losses = self.train_step(content, style)
                progress.update(1)
                progress.set_postfix({name: f"{value:.3f}" for name, value in losses.items()})
                record = {
                    "step": self.step, **losses, "lr": self.learning_rate(),
                    "seconds": round(time.monotonic() - started, 2),
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
                if self.step % config.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.step % config.sample_every == 0:
                    self.save_samples(content, style)
        finally:
            self.save_checkpoint()
            progress.close()
            log.close()
        return self.step


def stop_on_signals() -> threading.Event:
    """SIGINT/SIGTERM end the run after the current step, with a checkpoint, instead of killing
    it mid-step (in the main thread only: Python delivers signals there)."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
    return stop


def train(config: TrainConfig) -> int:
    """Train until `config.steps` or the wall-clock budget; returns the step reached."""
    return Trainer(config).run()
