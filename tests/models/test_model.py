"""The AdaIN formulas and the paper's user controls, checked against hand-written computations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from devkit import reference_port as port
from devkit.images import random_image
from models import images
from models.errors import InvalidInputError
from models.model import (
    MIN_SIDE,
    Masks,
    StyleMix,
    StyleTransfer,
    adain_target,
    adaptive_instance_normalization,
    calc_mean_std,
    calc_region_mean_std,
    content_loss,
    coral,
    masks_from_binary,
    normalise_mix_weights,
    style_loss,
)
from models.pipeline import Pipeline
from models.weights import load_model


@pytest.fixture(scope="module")
def net(reference_weights: tuple[Path, Path]) -> StyleTransfer:
    return load_model(*reference_weights, dtype=torch.float32)  # the reference's precision


def image(width: int, height: int, seed: int) -> Tensor:
    return images.prepare(random_image(width, height, seed))


def hand_mean_std(feat: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and sqrt(unbiased variance + 1e-5), written out."""
    n, c = feat.shape[:2]
    flat = feat.reshape(n, c, -1).double()
    count = flat.shape[-1]
    mean = flat.sum(dim=-1) / count
    variance = ((flat - mean[..., None]) ** 2).sum(dim=-1) / (count - 1)
    return mean.view(n, c, 1, 1).float(), (variance + 1e-5).sqrt().view(n, c, 1, 1).float()


def features(seed: int, shape: tuple[int, ...], scale: float = 1.0, shift: float = 0.0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * scale + shift


# --- formulas ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "boxed"])
def test_calc_mean_std_is_the_unbiased_computation(layout: str) -> None:
    # The networks' features are channels_last; a content box takes a view of some of them.
    feat = features(0, (2, 5, 9, 11), scale=3.0, shift=1.5)
    if layout == "channels_last":
        feat = feat.contiguous(memory_format=torch.channels_last)
    elif layout == "boxed":
        feat = feat.contiguous(memory_format=torch.channels_last)[..., 1:8, 2:11]
    mean, std = calc_mean_std(feat)
    expected_mean, expected_std = hand_mean_std(feat)
    assert mean.shape == std.shape == (2, 5, 1, 1)
    torch.testing.assert_close(mean, expected_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, expected_std, atol=1e-5, rtol=1e-5)


def test_adain_output_takes_the_style_statistics() -> None:
    content = features(1, (1, 8, 6, 5), scale=0.5, shift=-2.0)
    # Per-channel scales and shifts, so that a formula mixing up channels would show.
    style = features(2, (1, 8, 9, 11)) * torch.arange(1.0, 9.0).view(1, 8, 1, 1) + 3.0
    out = adaptive_instance_normalization(content, style)
    out_mean, out_std = hand_mean_std(out)
    style_mean, style_std = hand_mean_std(style)
    torch.testing.assert_close(out_mean, style_mean, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out_std, style_std, atol=1e-3, rtol=1e-4)
    # What remains is the content, normalised per channel.
    content_mean, content_std = hand_mean_std(content)
    normalised = (content - content_mean) / content_std
    torch.testing.assert_close((out - style_mean) / style_std, normalised, atol=1e-3, rtol=1e-3)


def test_region_statistics_of_a_binary_mask_are_those_of_the_selected_pixels() -> None:
    feat = features(3, (1, 4, 6, 7), scale=2.0)
    generator = torch.Generator().manual_seed(4)
    first = (torch.rand(6, 7, generator=generator) > 0.5).float()
    masks = torch.stack([first, 1 - first])[:, None]  # (2, 1, h, w)
    mean, std = calc_region_mean_std(feat, masks)
    assert mean.shape == std.shape == (2, 4, 1, 1)
    for k in range(2):
        selected = feat[..., masks[k, 0].bool()]  # (1, C, pixels)
        expected_mean, expected_std = calc_mean_std(selected[..., None])
        torch.testing.assert_close(mean[k : k + 1], expected_mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(std[k : k + 1], expected_std, atol=1e-5, rtol=1e-5)


def test_region_statistics_of_an_all_ones_mask_are_calc_mean_std() -> None:
    feat = features(5, (1, 3, 5, 8), scale=4.0, shift=1.0)
    mean, std = calc_region_mean_std(feat, torch.ones(1, 1, 5, 8))
    expected_mean, expected_std = calc_mean_std(feat)
    torch.testing.assert_close(mean, expected_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, expected_std, atol=1e-5, rtol=1e-5)


def test_interpolated_target_is_the_convex_combination_of_adain_outputs() -> None:
    content = features(6, (1, 8, 5, 5))
    styles = [features(7 + k, (1, 8, 6, 6), scale=k + 1.0, shift=k) for k in range(2)]
    stats = [calc_mean_std(style) for style in styles]
    style_mean = torch.cat([mean for mean, _ in stats])
    style_std = torch.cat([std for _, std in stats])
    target = adain_target(content, style_mean, style_std, torch.tensor([0.25, 0.75]))
    expected = sum(
        w * adaptive_instance_normalization(content, style)
        for w, style in zip((0.25, 0.75), styles, strict=True)
    )
    torch.testing.assert_close(target, expected, atol=1e-5, rtol=1e-5)


def test_losses_are_the_reference_formulas() -> None:
    taps_a = [features(10 + i, (1, 4 * (i + 1), 8, 8), scale=i + 1.0) for i in range(4)]
    taps_b = [features(20 + i, (1, 4 * (i + 1), 8, 8), shift=0.5) for i in range(4)]
    expected_style = torch.zeros((), dtype=torch.float64)
    for a, b in zip(taps_a, taps_b, strict=True):
        (mean_a, std_a), (mean_b, std_b) = hand_mean_std(a), hand_mean_std(b)
        expected_style += ((mean_a - mean_b).double() ** 2).mean()
        expected_style += ((std_a - std_b).double() ** 2).mean()
    assert style_loss(taps_a, taps_b).item() == pytest.approx(expected_style.item(), rel=1e-4)
    assert style_loss(taps_a, taps_a).item() == 0.0
    expected_content = ((taps_a[-1] - taps_b[-1]) ** 2).sum() / taps_a[-1].numel()
    assert content_loss(taps_a[-1], taps_b[-1]).item() == pytest.approx(expected_content.item())


def test_interpolation_weights_are_checked_and_normalised() -> None:
    torch.testing.assert_close(normalise_mix_weights([2.0, 6.0], 2), torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(normalise_mix_weights(None, 4), torch.full((4,), 0.25))
    for bad in ([1.0], [1.0, -1.0], [0.0, 0.0], [float("nan"), 1.0]):
        with pytest.raises(ValueError, match="weights"):
            normalise_mix_weights(bad, 2)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ((2e38, 2e38), (0.5, 0.5)),  # float32 overflows at 3.4e38: their sum would be inf
        ((1e308, 1e308), (0.5, 0.5)),  # finite doubles whose sum is not
        ((1e-300, 3e-300), (0.25, 0.75)),  # zero in float32
        ((5e-324, 0.0), (1.0, 0.0)),  # the smallest double
    ],
)
def test_any_finite_non_negative_weights_normalise(
    weights: tuple[float, float], expected: tuple[float, float]
) -> None:
    normalised = normalise_mix_weights(list(weights), 2)
    assert normalised.dtype == torch.float32
    torch.testing.assert_close(normalised, torch.tensor(expected))
    for bad in ((float("inf"), 1.0), (1e308, -1e-300)):
        with pytest.raises(InvalidInputError, match="finite, non-negative"):
            normalise_mix_weights(list(bad), 2)


def test_an_empty_region_takes_the_whole_image_statistics() -> None:
    """A mask of ~zero mass has no statistics of its own: it must not divide the features by
    sqrt(eps) (what an empty region's variance gave)."""
    feat = features(4, (1, 6, 5, 7), scale=2.0, shift=1.0)
    nearly_empty = torch.zeros(3, 1, 5, 7)
    nearly_empty[1, 0, 2, 3] = 1e-6
    nearly_empty[2] = 1e-9
    mean, std = calc_region_mean_std(feat, nearly_empty)
    whole_mean, whole_std = hand_mean_std(feat)
    for k in range(3):
        torch.testing.assert_close(mean[k : k + 1], whole_mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(std[k : k + 1], whole_std, atol=1e-5, rtol=1e-5)


def test_uncovered_pixels_take_the_unmasked_mix() -> None:
    feat = features(5, (1, 8, 6, 10), scale=1.5, shift=0.5)
    style_mean = features(6, (2, 8, 1, 1), shift=2.0)
    style_std = features(7, (2, 8, 1, 1)).abs() + 0.5
    weights = torch.tensor([0.25, 0.75])
    unmasked = adain_target(feat, style_mean, style_std, weights)
    # Nothing covered: all black, or only a style of weight 0 covers.
    nothing = adain_target(feat, style_mean, style_std, weights, Masks(torch.zeros(2, 6, 10)))
    torch.testing.assert_close(nothing, unmasked, atol=1e-5, rtol=1e-5)
    only_zero_weight = Masks(torch.stack([torch.ones(6, 10), torch.zeros(6, 10)]))
    torch.testing.assert_close(
        adain_target(feat, style_mean, style_std, torch.tensor([0.0, 1.0]), only_zero_weight),
        adain_target(feat, style_mean, style_std, torch.tensor([0.0, 1.0])),
        atol=1e-5,
        rtol=1e-5,
    )
    # The first style covers the left 4 columns; no mask covers the rest.
    left = torch.zeros(6, 10)
    left[:, :4] = 1
    partial = adain_target(
        feat, style_mean, style_std, weights, Masks(torch.stack([left, torch.zeros(6, 10)]))
    )
    assert torch.isfinite(partial).all()
    torch.testing.assert_close(partial[..., 4:], unmasked[..., 4:], atol=1e-5, rtol=1e-5)
    mean, std = hand_mean_std(feat[..., :4])
    region_only = (feat[..., :4] - mean) / std * style_std[:1] + style_mean[:1]
    torch.testing.assert_close(partial[..., :4], region_only, atol=1e-4, rtol=1e-4)


def test_the_content_box_gives_the_content_statistics() -> None:
    # A frame on a larger canvas (the video stabiliser's padding): the features outside its
    # region, whatever they are, change neither the statistics nor the target inside it.
    feat = features(8, (1, 8, 6, 10), scale=1.5, shift=0.5)
    style_mean = features(9, (2, 8, 1, 1), shift=2.0)
    style_std = features(10, (2, 8, 1, 1)).abs() + 0.5
    weights = torch.tensor([0.25, 0.75])
    inside = (8, 40, 16, 72)  # input pixels: the relu4_1 cells 1:5, 2:9 (stride 8)
    padded = feat.clone()
    padded[..., :, :2] = 40.0  # what the padding shows
    framed = adain_target(padded, style_mean, style_std, weights, content_box=inside)
    mean, std = hand_mean_std(feat[..., 1:5, 2:9])
    alone = sum(
        w * ((feat[..., 1:5, 2:9] - mean) / std * s + m)
        for w, m, s in zip(weights, style_mean.split(1), style_std.split(1), strict=True)
    )
    torch.testing.assert_close(framed[..., 1:5, 2:9], alone, atol=1e-4, rtol=1e-4)
    whole = adain_target(padded, style_mean, style_std, weights)
    assert (whole[..., 1:5, 2:9] - alone).abs().max() > 0.1  # the padding would have moved it
    # With masks too, each region's statistics are taken inside the content region.
    left = torch.zeros(6, 10)
    left[:, :5] = 1
    masks = Masks(torch.stack([left, 1 - left]))
    masked = adain_target(padded, style_mean, style_std, weights, masks, inside)
    mean, std = hand_mean_std(feat[..., 1:5, 2:5])
    torch.testing.assert_close(
        masked[..., 1:5, 2:5],
        (feat[..., 1:5, 2:5] - mean) / std * style_std[:1] + style_mean[:1],
        atol=1e-4,
        rtol=1e-4,
    )


def test_a_content_box_holds_the_margin_within_the_frames_range() -> None:
    # The stabiliser's mirrored margin can wake a channel the frame leaves at zero: divided by
    # the frame's tiny std it would decode to a saturated patch. Held within the range the
    # frame's own features span, the margin's targets stay within those of the frame.
    feat = features(14, (1, 8, 6, 10), scale=1.5, shift=0.5).clamp(min=0)  # as after a ReLU
    inside = (8, 40, 16, 72)  # the relu4_1 cells 1:5, 2:9
    feat[:, 3, 1:5, 2:9] = 0  # silent in the frame
    feat[:, 3, :, :2] = 5.0  # awake in the margin
    feat[:, 5, :, :2] = 40.0  # far beyond the frame's range
    style_mean = features(15, (2, 8, 1, 1), shift=2.0)
    style_std = features(16, (2, 8, 1, 1)).abs() + 0.5
    weights = torch.tensor([0.25, 0.75])
    framed = adain_target(feat, style_mean, style_std, weights, content_box=inside)
    frame = framed[..., 1:5, 2:9]
    low, high = frame.amin(dim=(2, 3), keepdim=True), frame.amax(dim=(2, 3), keepdim=True)
    assert bool(((framed >= low - 1e-4) & (framed <= high + 1e-4)).all())
    mixed_mean = (weights.view(-1, 1) * style_mean.flatten(1)).sum(0)
    torch.testing.assert_close(framed[0, 3], mixed_mean[3].expand(6, 10))
    mean, std = hand_mean_std(feat[..., 1:5, 2:9])
    alone = sum(
        w * ((feat[..., 1:5, 2:9] - mean) / std * s + m)
        for w, m, s in zip(weights, style_mean.split(1), style_std.split(1), strict=True)
    )
    torch.testing.assert_close(frame, alone, atol=1e-4, rtol=1e-4)  # the frame's own target


def test_a_content_box_of_one_feature_keeps_the_whole_statistics() -> None:
    # A frame of a few pixels on the stabiliser's canvas covers one relu4_1 cell: no variance.
    feat = features(11, (1, 8, 3, 3), scale=1.5, shift=0.5)
    style_mean, style_std = features(12, (1, 8, 1, 1)), features(13, (1, 8, 1, 1)).abs() + 0.5
    weights = torch.ones(1)
    tiny = adain_target(feat, style_mean, style_std, weights, content_box=(0, 9, 0, 9))
    assert torch.isfinite(tiny).all()
    torch.testing.assert_close(tiny, adain_target(feat, style_mean, style_std, weights))


def test_uncovered_masks_give_sane_images(net: StyleTransfer) -> None:
    """All-black masks are the unmasked result; a mask covering a corner gives finite pixels,
    the unmasked ones far from the corner (within the decoder's reach, they mix)."""
    content = image(96, 64, seed=1)
    styles = [image(32, 32, seed=2), image(40, 24, seed=3)]
    corner = torch.zeros(2, 64, 96)
    corner[0, :16, :16] = 1
    with torch.inference_mode():
        plain = Pipeline(net).stylize(content, styles, mix_weights=[1.0, 3.0])
        black = Pipeline(net).stylize(
            content, styles, mix_weights=[1.0, 3.0], masks=torch.zeros(2, 64, 96)
        )
        cornered = Pipeline(net).stylize(content, styles, mix_weights=[1.0, 3.0], masks=corner)
    torch.testing.assert_close(black, plain, atol=1e-4, rtol=0)
    assert torch.isfinite(cornered).all()
    far = (cornered - plain)[..., 40:, 48:].abs()
    assert far.mean() < 0.01 and far.max() < 0.1
    assert (cornered - plain)[..., :16, :16].abs().mean() > 0.01  # the corner is styled


def test_huge_and_tiny_weights_equal_equal_weights(net: StyleTransfer) -> None:
    content = image(40, 32, seed=1)
    styles = [image(32, 32, seed=2), image(40, 24, seed=3)]
    with torch.inference_mode():
        equal = Pipeline(net).stylize(content, styles, mix_weights=[1.0, 1.0])
        for weights in ([2e38, 2e38], [1e308, 1e308], [1e-300, 1e-300]):
            torch.testing.assert_close(
                Pipeline(net).stylize(content, styles, mix_weights=weights), equal, atol=1e-6,
                rtol=0,
            )


def test_masks_from_binary_splits_at_one_half() -> None:
    mask = torch.tensor([[0.0, 0.2, 0.49], [0.51, 0.8, 1.0]])
    masks = masks_from_binary(mask)
    assert masks.binary
    assert masks.values.shape == (2, 2, 3)
    torch.testing.assert_close(masks.values[0], torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    torch.testing.assert_close(masks.values[0] + masks.values[1], torch.ones(2, 3))


def test_binary_masks_take_the_nearest_grid_cell_and_soft_ones_the_area() -> None:
    mask = torch.zeros(16, 16)
    mask[:, :5] = 1  # the edge inside the second of two 8 px cells
    hard = masks_from_binary(mask).on_grid((2, 2))
    soft = Masks(masks_from_binary(mask).values).on_grid((2, 2))
    torch.testing.assert_close(hard[0, 0], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert 0 < soft[0, 0, 0, 1] < 1 and 0 < soft[0, 0, 0, 0] < 1


def test_style_mix_checks_the_controls_once_and_normalises_the_weights() -> None:
    mean, std = torch.zeros(2, 4, 1, 1), torch.ones(2, 4, 1, 1)
    mix = StyleMix(mean, std, torch.tensor([1.0, 3.0]), alpha=0.5)
    torch.testing.assert_close(mix.weights, torch.tensor([0.25, 0.75]))
    for bad_alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(InvalidInputError, match="alpha") as error:
            StyleMix(mean, std, torch.ones(2), alpha=bad_alpha)
        assert error.value.field == "alpha"
    with pytest.raises(InvalidInputError, match="got 3") as error:
        StyleMix(mean, std, torch.ones(3))
    assert error.value.field == "weights"
    with pytest.raises(InvalidInputError, match="3 masks for 2 styles") as error:
        StyleMix(mean, std, torch.ones(2), Masks(torch.ones(3, 8, 8)))
    assert error.value.field == "mask"


# --- coral (colour preservation) ---------------------------------------------------------------


def test_coral_moves_the_source_to_the_target_colour_statistics() -> None:
    source = image(24, 20, seed=30)[0]
    target = image(16, 18, seed=31)[0] * torch.tensor([0.3, 0.9, 0.6]).view(3, 1, 1) + 0.05
    out = coral(source, target)
    assert out.shape == source.shape and out.dtype == source.dtype
    flat_out, flat_src, flat_tgt = (x.reshape(3, -1).double() for x in (out, source, target))
    torch.testing.assert_close(flat_out.mean(dim=1), flat_tgt.mean(dim=1), atol=1e-5, rtol=0)

    # The reference's covariance: of channels normalised to unit std, as Gram matrix + identity.
    def gram(flat: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        normalised = (flat - mean[:, None]) / std[:, None]
        return normalised @ normalised.T

    def std(flat: Tensor) -> Tensor:
        return flat.std(dim=1)

    tgt_cov = gram(flat_tgt, flat_tgt.mean(dim=1), std(flat_tgt)) + torch.eye(3).double()
    src_cov = gram(flat_src, flat_src.mean(dim=1), std(flat_src)) + torch.eye(3).double()
    # Exactly: out's Gram (in the target's units) = T - T^1/2 S^-1 T^1/2 for the + identity terms.
    tgt_root = _symmetric_sqrt(tgt_cov)
    expected = tgt_cov - tgt_root @ torch.linalg.inv(src_cov) @ tgt_root
    out_gram = gram(flat_out, flat_tgt.mean(dim=1), std(flat_tgt))
    torch.testing.assert_close(out_gram, expected, atol=1e-3, rtol=1e-4)
    # Approximately: the target's correlations, as its pixel count dwarfs the identity terms.
    torch.testing.assert_close(
        torch.corrcoef(flat_out), torch.corrcoef(flat_tgt), atol=0.03, rtol=0
    )


def _symmetric_sqrt(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ values.sqrt().diag() @ vectors.T


# --- the network and its controls --------------------------------------------------------------


def test_encode_taps_end_at_the_relu4_1_features(net: StyleTransfer) -> None:
    content = image(40, 24, seed=1)
    with torch.inference_mode():
        taps = net.encode_taps(content)
        torch.testing.assert_close(taps[-1], net.encode(content))
    assert [tap.shape[1] for tap in taps] == [64, 128, 256, 512]
    assert [tap.shape[-2:] for tap in taps] == [(24, 40), (12, 20), (6, 10), (3, 5)]


def test_alpha_zero_reconstructs_the_content_features(net: StyleTransfer) -> None:
    content, style = image(48, 40, seed=1), image(32, 32, seed=2)
    with torch.inference_mode():
        out = Pipeline(net).stylize(content, [style], alpha=0.0)
        expected = net.decode(net.encode(content), (40, 48))
        styled = Pipeline(net).stylize(content, [style], alpha=1.0)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out - styled).abs().max() > 1e-3  # the style does change the output


def test_alpha_blends_content_features_and_target(net: StyleTransfer) -> None:
    content, style = image(40, 40, seed=1), image(32, 48, seed=2)
    with torch.inference_mode():
        out = Pipeline(net).stylize(content, [style], alpha=0.3)
        content_feat = net.encode(content)
        target = adaptive_instance_normalization(content_feat, net.encode(style))
        expected = net.decode(0.7 * content_feat + 0.3 * target, (40, 40))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="alpha"):
        Pipeline(net).stylize(content, [style], alpha=1.5)


def test_interpolation_weights_select_and_normalise(net: StyleTransfer) -> None:
    content = image(40, 32, seed=1)
    first, second = image(32, 32, seed=2), image(40, 24, seed=3)
    with torch.inference_mode():
        only_first = Pipeline(net).stylize(content, [first])
        weighted = {
            weights: Pipeline(net).stylize(content, [first, second], mix_weights=list(weights))
            for weights in ((1.0, 0.0), (0.0, 1.0), (2.0, 2.0), (1.0, 1.0))
        }
        default = Pipeline(net).stylize(content, [first, second])
    torch.testing.assert_close(weighted[(1.0, 0.0)], only_first, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weighted[(2.0, 2.0)], weighted[(1.0, 1.0)], atol=1e-6, rtol=0)
    torch.testing.assert_close(default, weighted[(1.0, 1.0)], atol=1e-6, rtol=0)
    assert (weighted[(0.0, 1.0)] - only_first).abs().max() > 1e-3


def test_all_ones_masks_equal_the_unmasked_result(net: StyleTransfer) -> None:
    content = image(48, 40, seed=1)
    styles = [image(32, 32, seed=2), image(24, 40, seed=3)]
    with torch.inference_mode():
        plain = Pipeline(net).stylize(content, styles, mix_weights=[1.0, 3.0])
        masked = Pipeline(net).stylize(
            content, styles, mix_weights=[1.0, 3.0], masks=torch.ones(2, 40, 48)
        )
    torch.testing.assert_close(masked, plain, atol=1e-4, rtol=0)


def test_disjoint_masks_use_each_region_statistics(net: StyleTransfer) -> None:
    content = image(64, 48, seed=1)
    styles = [image(32, 32, seed=2), image(40, 32, seed=3)]
    # Masks on the relu4_1 grid (6 x 8) itself, so that each region is exactly binary there.
    grid_left = torch.zeros(6, 8)
    grid_left[:, :3] = 1
    masks = torch.stack([grid_left, 1 - grid_left])
    with torch.inference_mode():
        out = Pipeline(net).stylize(content, styles, masks=masks)
        content_feat = net.encode(content)
        style_feats = [net.encode(style) for style in styles]
        left, right = content_feat[..., :3], content_feat[..., 3:]
        expected_target = torch.cat(
            [
                adaptive_instance_normalization(left, style_feats[0]),
                adaptive_instance_normalization(right, style_feats[1]),
            ],
            dim=-1,
        )
        expected = net.decode(expected_target, (48, 64))
        # What using the whole image's content statistics for each style would give instead.
        global_target = torch.cat(
            [
                adaptive_instance_normalization(content_feat, style_feats[0])[..., :3],
                adaptive_instance_normalization(content_feat, style_feats[1])[..., 3:],
            ],
            dim=-1,
        )
        global_stats = net.decode(global_target, (48, 64))
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    assert (global_stats - expected).abs().max() > 1e-3


def test_full_resolution_masks_follow_the_regions(net: StyleTransfer) -> None:
    """A left/right mask at image resolution: each side looks like its own single style far
    from the border (the decoder's receptive field blurs the seam)."""
    content = image(64, 64, seed=1)
    styles = [image(32, 32, seed=2), image(32, 32, seed=3)]
    mask = torch.zeros(64, 64)
    mask[:, :32] = 1
    with torch.inference_mode():
        out = Pipeline(net).stylize(content, styles, masks=masks_from_binary(mask))
        singles = [Pipeline(net).stylize(content, [style]) for style in styles]
    left, right = out[..., :8], out[..., -8:]
    assert (left - singles[0][..., :8]).abs().mean() < (left - singles[1][..., :8]).abs().mean()
    assert (right - singles[1][..., -8:]).abs().mean() < (right - singles[0][..., -8:]).abs().mean()


def quantised(image: Tensor) -> Tensor:
    """8-bit levels, rounded as torchvision's `save_image` (the reference's output)."""
    return image.mul(255).add(0.5).clamp(0, 255).to(torch.int16)


def test_one_binary_mask_is_the_reference_spatial_control(
    net: StyleTransfer, reference_weights: tuple[Path, Path]
) -> None:
    """The reference's form (one binary mask, two styles) against `test.lua`'s spatial control
    re-implemented in `reference_port`: within one 8-bit level, in fp32. The mask's edges cut
    through relu4_1 cells, where area-averaging would blend the two regions."""
    content = image(52, 44, seed=40)
    styles = [image(40, 48, seed=41), image(48, 36, seed=42)]
    rows, columns = torch.meshgrid(torch.arange(44), torch.arange(52), indexing="ij")
    mask = (((rows - 20) ** 2 + (columns - 30) ** 2 < 15**2) | (columns < 5)).float()
    vgg, decoder = port.load_nets(*reference_weights)
    with torch.inference_mode():
        ours = Pipeline(net).stylize(content, styles, alpha=0.8, masks=masks_from_binary(mask))
        theirs = port.spatial_control(vgg, decoder, content, styles, mask, alpha=0.8)
        # The same two regions given as two soft masks: resized by area, not by the reference.
        area = Pipeline(net).stylize(
            content, styles, alpha=0.8, masks=masks_from_binary(mask).values
        )
    reference = quantised(theirs[..., :44, :52])
    assert (quantised(ours) - reference).abs().max() <= 1
    assert (quantised(area) - reference).abs().max() > 1


def test_a_batch_applies_each_item_its_own_mix(net: StyleTransfer) -> None:
    """The one stylize path: a batch with per-item styles, weights, masks and alpha gives each
    item what it gives alone (up to float rounding: a batch may sum in another order)."""
    contents = [image(40, 32, seed=50 + i) for i in range(3)]
    stats = [Pipeline(net).style_statistics(image(32, 32, seed=60 + i)) for i in range(2)]
    mean, std = torch.cat([m for m, _ in stats]), torch.cat([s for _, s in stats])
    left = torch.zeros(32, 40)
    left[:, :20] = 1
    mixes = [
        StyleMix(mean[:1], std[:1], torch.ones(1), alpha=0.4),
        StyleMix(mean, std, torch.tensor([1.0, 3.0])),
        StyleMix(mean, std, torch.ones(2), masks_from_binary(left), alpha=0.9),
    ]
    with torch.inference_mode():
        batch = Pipeline(net).stylize_batch(torch.cat(contents), mixes)
        alone = [
            Pipeline(net).stylize_batch(c, [mix])
            for c, mix in zip(contents, mixes, strict=True)
        ]
    for one, together in zip(alone, batch, strict=True):
        torch.testing.assert_close(together[None], one, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="3 contents but 2"):
        Pipeline(net).stylize_batch(torch.cat(contents), mixes[:2])


@pytest.mark.parametrize(("width", "height"), [(53, 37), (130, 9), (9, 9), (17, 64)])
def test_output_has_the_input_size(net: StyleTransfer, width: int, height: int) -> None:
    content, style = image(width, height, seed=4), image(20, 30, seed=5)
    with torch.inference_mode():
        out = Pipeline(net).stylize(content, [style], masks=torch.ones(1, height, width))
    assert out.shape == (1, 3, height, width)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize(("width", "height"), [(1, 1), (8, 40), (40, MIN_SIDE - 1)])
def test_too_small_images_are_refused_clearly(
    net: StyleTransfer, width: int, height: int
) -> None:
    with torch.inference_mode(), pytest.raises(ValueError, match=f"at least {MIN_SIDE} px"):
        Pipeline(net).stylize(torch.rand(1, 3, height, width), [image(16, 16, seed=1)])
    with torch.inference_mode(), pytest.raises(ValueError, match=f"at least {MIN_SIDE} px"):
        Pipeline(net).stylize(image(16, 16, seed=1), [torch.rand(1, 3, height, width)])


def test_preserve_color_encodes_the_recoloured_style(net: StyleTransfer) -> None:
    content, style = image(40, 40, seed=6), image(32, 32, seed=7)
    with torch.inference_mode():
        out = Pipeline(net).stylize(content, [style], preserve_color=True)
        expected = Pipeline(net).stylize(content, [coral(style[0], content[0])[None]])
        plain = Pipeline(net).stylize(content, [style])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert (out - plain).abs().max() > 1e-3
