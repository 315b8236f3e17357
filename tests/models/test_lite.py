"""The lite model: its shape and cost, its weights, every control through the one stylize path,
the tiling's assumptions, and its distillation trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from devkit.images import random_image
from models import tiling
from models.data import is_held_out
from models.distill import DistillConfig, Distiller, embedding_loss
from models.lite import (
    DEFAULT_LITE,
    LiteStyleTransfer,
    conv_flops,
    fit_conv,
    load_lite,
    make_lite,
    save_lite,
)
from models.model import (
    Masks,
    StyleMix,
    adaptive_instance_normalization,
    coral,
    make_decoder,
    make_encoder,
    masks_from_binary,
)
from models.pipeline import Pipeline
from models.weights import WeightsError, save_state
from tests.models.test_train import image_folder

TILE_TOLERANCE = 1e-4  # as tests/models/test_tiling.py: float rounding, not a wrong margin


@pytest.fixture(scope="module")
def lite() -> Pipeline:
    """The committed weights, fp32, in the one stylize path."""
    return Pipeline(load_lite())


def image(width: int, height: int, seed: int) -> Tensor:
    """A smooth random image (1, 3, height, width) in [0, 1]."""
    small = torch.rand(
        1, 3, max(2, height // 8), max(2, width // 8), generator=torch.Generator().manual_seed(seed)
    )
    return nn.functional.interpolate(small, size=(height, width), mode="bicubic").clamp(0, 1)


# --- shape, cost, weights ------------------------------------------------------------------------


def test_lite_costs_a_small_fraction_of_the_full_model() -> None:
    net = make_lite()
    lite = conv_flops(net.encoder, 3, 512, 512) + conv_flops(net.decoder, 128, 64, 64)
    full = conv_flops(make_encoder(), 3, 512, 512) + conv_flops(make_decoder(), 512, 64, 64)
    assert full / lite > 8
    assert sum(p.numel() for p in net.parameters()) < 1_000_000
    assert DEFAULT_LITE.stat().st_size < 10 * 2**20


def test_features_keep_the_stride_and_the_taps_their_grids(lite: Pipeline) -> None:
    content = image(40, 24, seed=1)
    with torch.inference_mode():
        taps = lite.net.encode_taps(content)
        torch.testing.assert_close(taps[-1], lite.net.encode(content))
    assert [tap.shape[1] for tap in taps] == [32, 64, 128]
    assert [tap.shape[-2:] for tap in taps] == [(12, 20), (6, 10), (3, 5)]


@pytest.mark.parametrize(("width", "height"), [(53, 37), (130, 9), (9, 9), (17, 64)])
def test_output_has_the_input_size(lite: Pipeline, width: int, height: int) -> None:
    content, style = image(width, height, seed=4), image(20, 30, seed=5)
    with torch.inference_mode():
        out = lite.stylize(content, [style], masks=torch.ones(1, height, width))
    assert out.shape == (1, 3, height, width)
    assert out.min() >= 0 and out.max() <= 1


def test_weights_round_trip_and_foreign_files_are_refused(lite: Pipeline, tmp_path: Path) -> None:
    path = tmp_path / "lite.safetensors"
    save_lite(lite.net, path)
    again = load_lite(path)
    for (name, ours), theirs in zip(
        lite.net.state_dict().items(), again.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(theirs, ours.half().float(), msg=name)  # stored in fp16
    decoder_file = tmp_path / "decoder.safetensors"
    save_state(make_decoder().state_dict(), decoder_file)
    with pytest.raises(WeightsError, match="not a lite model"):
        load_lite(decoder_file)


def test_the_committed_weights_stylize(lite: Pipeline) -> None:
    """Trained weights: the output's colours move towards the style's while the content's
    layout stays (a light left half and a dark right half stay so)."""
    content = torch.full((1, 3, 64, 64), 0.15)
    content[..., :32] = 0.85
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    style = torch.tensor([0.9, 0.05, 0.05]).view(1, 3, 1, 1) + 0.1 * noise  # a red canvas
    with torch.inference_mode():
        out = lite.stylize(content, [style.clamp(0, 1)])

    def colour(x: Tensor) -> Tensor:
        return x.mean(dim=(0, 2, 3))

    assert (colour(out) - colour(style)).norm() < 0.8 * (colour(content) - colour(style)).norm()
    # The light half stays lighter (step 3,818 keeps 0.076 of the 0.7 contrast: see its card).
    assert out[..., 4:28].mean() > out[..., 36:60].mean() + 0.05


def steps_from_the_border(out: Tensor, rows: int = 12) -> Tensor:
    """Mean absolute step between successive rows (columns), from each border inward, averaged
    over the four sides: (rows,). A line drawn along the borders is a large first step."""
    steps = []
    for quarter_turns in range(4):
        picture = torch.rot90(out[0].float(), quarter_turns, (1, 2))[:, :, 8:-8]
        steps.append((picture[:, 1 : rows + 1] - picture[:, :rows]).abs().mean(dim=(0, 2)))
    return torch.stack(steps).mean(dim=0)


@pytest.mark.parametrize("content_kind", ["flat", "textured"])
def test_the_borders_look_like_the_interior(lite: Pipeline, content_kind: str) -> None:
    """No line along the borders: the steps between the outermost rows are no larger than the
    steps further in (the zero padding of the convs drew one, twice as contrasted)."""
    flat = torch.full((1, 3, 96, 128), 0.5)
    content = flat if content_kind == "flat" else image(128, 96, seed=3)
    with torch.inference_mode():
        out = lite.stylize(content, [image(64, 64, seed=7)])
    steps = steps_from_the_border(out)
    assert steps[:3].max() <= 1.3 * steps[6:].mean(), steps


# --- every control -----------------------------------------------------------------------------


def adain_by_hand(x: Tensor, y: Tensor) -> Tensor:
    """The paper's eq. 8, written out here (not the library's): per channel,
    sigma(y) * (x - mu(x)) / sigma(x) + mu(y), the reference's unbiased std + 1e-5."""
    mu_x, mu_y = x.mean(dim=(2, 3), keepdim=True), y.mean(dim=(2, 3), keepdim=True)
    sigma_x = (x.var(dim=(2, 3), keepdim=True, correction=1) + 1e-5).sqrt()
    sigma_y = (y.var(dim=(2, 3), keepdim=True, correction=1) + 1e-5).sqrt()
    return sigma_y * (x - mu_x) / sigma_x + mu_y


def test_alpha_zero_decodes_the_content_and_alpha_blends(lite: Pipeline) -> None:
    content, style = image(48, 40, seed=1), image(32, 32, seed=2)
    with torch.inference_mode():
        zero = lite.stylize(content, [style], alpha=0.0)
        content_feat = lite.net.encode(content)
        target = adain_by_hand(content_feat, lite.net.encode(style))
        partial = lite.stylize(content, [style], alpha=0.3)
        full = lite.stylize(content, [style])
        torch.testing.assert_close(zero, lite.net.decode(content_feat, (40, 48)), atol=1e-5, rtol=0)
        expected = lite.net.decode(0.7 * content_feat + 0.3 * target, (40, 48))
        torch.testing.assert_close(partial, expected, atol=1e-5, rtol=1e-4)
    assert (zero - full).abs().max() > 1e-2


def test_interpolation_weights_select_and_normalise(lite: Pipeline) -> None:
    content = image(40, 32, seed=1)
    first, second = image(32, 32, seed=2), image(40, 24, seed=3)
    with torch.inference_mode():
        only_first = lite.stylize(content, [first])
        one_zero = lite.stylize(content, [first, second], mix_weights=[1.0, 0.0])
        zero_one = lite.stylize(content, [first, second], mix_weights=[0.0, 1.0])
        double = lite.stylize(content, [first, second], mix_weights=[2.0, 2.0])
        default = lite.stylize(content, [first, second])
    torch.testing.assert_close(one_zero, only_first, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(double, default, atol=1e-6, rtol=0)
    assert (zero_one - only_first).abs().max() > 1e-2


def test_masks_use_each_region_statistics(lite: Pipeline) -> None:
    content = image(64, 48, seed=1)
    styles = [image(32, 32, seed=2), image(40, 32, seed=3)]
    grid_left = torch.zeros(6, 8)  # on the feature grid itself: exactly binary there
    grid_left[:, :3] = 1
    with torch.inference_mode():
        out = lite.stylize(content, styles, masks=torch.stack([grid_left, 1 - grid_left]))
        ones = lite.stylize(content, styles, mix_weights=[1.0, 3.0], masks=torch.ones(2, 48, 64))
        plain = lite.stylize(content, styles, mix_weights=[1.0, 3.0])
        feat = lite.net.encode(content)
        style_feats = [lite.net.encode(style) for style in styles]
        target = torch.cat(
            [
                adaptive_instance_normalization(feat[..., :3], style_feats[0]),
                adaptive_instance_normalization(feat[..., 3:], style_feats[1]),
            ],
            -1,
        )
        expected = lite.net.decode(target, (48, 64))
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(ones, plain, atol=1e-4, rtol=0)
    assert (out - plain).abs().max() > 1e-2


def test_colour_preservation_encodes_the_recoloured_style(lite: Pipeline) -> None:
    content, style = image(40, 40, seed=6), image(32, 32, seed=7)
    with torch.inference_mode():
        out = lite.stylize(content, [style], preserve_color=True)
        expected = lite.stylize(content, [coral(style[0], content[0])[None]])
        plain = lite.stylize(content, [style])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert (out - plain).abs().max() > 1e-3


def test_a_batch_applies_each_item_its_own_mix(lite: Pipeline) -> None:
    contents = [image(40, 32, seed=50 + i) for i in range(2)]
    stats = [lite.style_statistics(image(32, 32, seed=60 + i)) for i in range(2)]
    mean, std = torch.cat([m for m, _ in stats]), torch.cat([s for _, s in stats])
    left = torch.zeros(32, 40)
    left[:, :20] = 1
    mixes = [
        StyleMix(mean[:1], std[:1], torch.ones(1), alpha=0.4),
        StyleMix(mean, std, torch.ones(2), masks_from_binary(left), alpha=0.9),
    ]
    with torch.inference_mode():
        batch = lite.stylize_batch(torch.cat(contents), mixes)
        alone = [lite.stylize_batch(c, [mix]) for c, mix in zip(contents, mixes, strict=True)]
    for one, together in zip(alone, batch, strict=True):
        torch.testing.assert_close(together[None], one, rtol=1e-4, atol=1e-4)


# --- tiling ------------------------------------------------------------------------------------


def test_the_tiling_margin_covers_the_lite_networks(lite: Pipeline) -> None:
    reach = tiling.cut_reach([*lite.net.encoder, *lite.net.decoder])
    assert 0 < reach <= tiling.MARGIN
    # Space-to-depth halves the reach as a pool does, depth-to-space doubles it.
    assert tiling.cut_reach([nn.Conv2d(3, 3, 3), nn.PixelUnshuffle(2)]) == 1
    assert tiling.cut_reach([nn.Conv2d(3, 12, 3), nn.PixelShuffle(2)]) == 2


@pytest.mark.parametrize("control", ["plain", "alpha", "binary mask", "soft masks"])
def test_tiled_equals_untiled(lite: Pipeline, control: str) -> None:
    height, width = 203, 157
    content = image(width, height, seed=3)
    masks = {
        "binary mask": masks_from_binary(image(width, height, seed=5)[0, 0]),
        "soft masks": Masks(torch.cat([image(width, height, seed=4)[0, :2]])),
    }.get(control)
    means, stds = lite.style_statistics(torch.cat([image(48, 48, seed=1), image(48, 48, seed=2)]))
    mix = StyleMix(means, stds, torch.tensor([1.0, 3.0]), masks, 0.6 if control == "alpha" else 1.0)
    with torch.inference_mode():
        expected = Pipeline(lite.net, tile_size=0).stylize_batch(content, [mix])
        out = Pipeline(lite.net, tile_size=64).stylize_batch(content, [mix])
    torch.testing.assert_close(out, expected, atol=TILE_TOLERANCE, rtol=0)


# --- the distillation -------------------------------------------------------------------------


def test_fit_conv_recovers_a_linear_layer() -> None:
    torch.manual_seed(0)
    source, fitted = nn.Conv2d(5, 4, 3, padding=1), nn.Conv2d(5, 4, 3, padding=1)
    inputs = torch.randn(3, 5, 16, 16)
    with torch.no_grad():
        fit_conv(fitted, inputs, source(inputs), samples=600)
        torch.testing.assert_close(fitted(inputs), source(inputs), atol=1e-3, rtol=1e-3)


def add_held_out(folder: Path, count: int, seed: int) -> Path:
    """`count` images of the held-out split (what the curve is measured on) in `folder`."""
    made, index = 0, 0
    while made < count:
        path = folder / f"held_{seed}_{index}.png"
        index += 1
        if is_held_out(path):
            random_image(40, 32, seed=seed * 100 + index).save(path)
            made += 1
    return folder


@pytest.fixture
def distill_config(tmp_path: Path, reference_weights: tuple[Path, Path]) -> DistillConfig:
    encoder, decoder = reference_weights
    return DistillConfig(
        content_dir=add_held_out(image_folder(tmp_path / "content", 8, seed=1), 1, seed=3),
        style_dir=add_held_out(image_folder(tmp_path / "style", 8, seed=2), 1, seed=4),
        out_dir=tmp_path / "run",
        teacher_encoder=encoder,
        teacher_decoder=decoder,
        steps=3,
        batch_size=2,
        resize=32,
        crop=32,
        workers=0,
        checkpoint_every=2,
        eval_every=3,
        eval_pairs=1,
        eval_size=32,
    )


def test_distillation_starts_from_a_fit_and_resumes(distill_config: DistillConfig) -> None:
    distiller = Distiller(distill_config)
    batch = distiller.init_batch()
    with torch.no_grad():
        taps = distiller.teacher.encode_taps(batch)[1:]
        fitted = embedding_loss(distiller.embeds, distiller.student.encode_taps(batch), taps)
        fresh = make_lite()
        for layer in [*distiller.embeds]:
            layer.reset_parameters()
        unfitted = embedding_loss(distiller.embeds, fresh.encode_taps(batch), taps)
    assert fitted < 0.5 * unfitted  # the least-squares head start

    assert Distiller(distill_config).run() == 3
    log = [
        json.loads(line) for line in (distill_config.out_dir / "log.jsonl").read_text().splitlines()
    ]
    assert [record["step"] for record in log] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(list(record.values()))).all() for record in log)
    assert {"embed", "content", "style", "content_photo", "teacher_pixel"} <= set(log[0])
    curve = json.loads((distill_config.out_dir / "curve.jsonl").read_text())
    assert curve["step"] == 3 and curve["pairs"] == 1
    ema = load_lite(distill_config.out_dir / "lite_ema.safetensors")
    assert isinstance(ema, LiteStyleTransfer)

    distill_config.steps = 5
    resumed = Distiller(distill_config)
    assert resumed.step == 3
    assert resumed.run() == 5


def test_distillation_can_start_from_committed_weights(distill_config: DistillConfig) -> None:
    """--init-weights continues a model (the checkpoint of its run lost): the student and its
    EMA are the file's weights, the embeddings fitted to them."""
    first = Distiller(distill_config)
    first.run()
    weights = distill_config.out_dir / "lite_ema.safetensors"
    saved = load_lite(weights)
    distill_config.out_dir = distill_config.out_dir.parent / "continued"
    distill_config.init_weights = weights
    continued = Distiller(distill_config)
    assert continued.step == 0
    for mine, theirs in zip(
        continued.ema_model().state_dict().values(), saved.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(mine, theirs)
    batch = continued.init_batch()
    with torch.no_grad():
        taps = continued.teacher.encode_taps(batch)[1:]
        lite_taps = continued.student.encode_taps(batch)
        fitted = embedding_loss(continued.embeds, lite_taps, taps)
        for layer in continued.embeds:
            layer.reset_parameters()
        unfitted = embedding_loss(continued.embeds, lite_taps, taps)
    assert fitted < 0.5 * unfitted
