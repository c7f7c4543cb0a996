"""The 15 corruptions against the published formulas, written out here independently of cvtrain's code.

Each reference below follows ``make_imagenet_c.py`` (Hendrycks & Dietterich) in the size-independent form of
``imagecorruptions`` (Michaelis et al.), with the parameter tables copied from the paper's code, SciPy where the
reference used SciPy or scikit-image, and PIL where it used PIL. The reference draws its random numbers from
the same seeded ``Generator`` in the same order, so the outputs must agree value for value; where the two
implementations take different float paths (OpenCV filters against SciPy's) a value may differ by one level
after truncation to uint8.
"""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import scipy.ndimage as ndi
from PIL import Image

from cvtrain.evaluation.corruptions import (
    CORRUPTIONS,
    FAMILIES,
    _glass_shuffle,
    corrupt,
    corruption_names,
    frost_texture,
)

SEED = 20190


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """72 x 96 RGB: gradients, a red block with sharp edges, a dark corner, mild noise."""
    rng = np.random.default_rng(123)
    yy, xx = np.mgrid[0:72, 0:96].astype(np.float64)
    picture = np.stack([xx * 255 / 96, yy * 255 / 72, (xx + yy) * 127 / 168], axis=-1)
    picture[20:50, 30:70] = [220, 40, 60]
    picture[:12, :12] = 0  # black: hue and saturation 0 in HSV
    picture += rng.normal(0, 8, picture.shape)
    return np.clip(picture, 0, 255).astype(np.uint8)


def rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def assert_close(ours: np.ndarray, reference: np.ndarray, *, levels: int = 0, share: float = 0.0) -> None:
    """At most ``levels`` apart anywhere, and apart at all on at most ``share`` of the values."""
    assert ours.shape == reference.shape and ours.dtype == np.uint8
    difference = np.abs(ours.astype(np.int64) - np.asarray(reference).astype(np.int64))
    assert difference.max() <= levels, difference.max()
    assert (difference > 0).mean() <= share, (difference > 0).mean()


def u8(values: np.ndarray) -> np.ndarray:
    return np.uint8(values)  # imagecorruptions.corrupt ends with np.uint8(...): truncation


# ------------------------------------------------------------------------------------- reference formulas
def ref_gaussian(x, sigma, truncate=4.0, mode="nearest"):  # skimage.filters.gaussian over the image axes
    sigma = (sigma, sigma) if np.isscalar(sigma) else tuple(sigma)
    return ndi.gaussian_filter(x, sigma + (0,) * (x.ndim - 2), mode=mode, truncate=truncate)


def ref_zoom(img, factor):  # imagecorruptions.clipped_zoom (the caller keeps the top-left H x W)
    ch0, ch1 = int(np.ceil(img.shape[0] / float(factor))), int(np.ceil(img.shape[1] / float(factor)))
    top0, top1 = (img.shape[0] - ch0) // 2, (img.shape[1] - ch1) // 2
    return ndi.zoom(img[top0:top0 + ch0, top1:top1 + ch1], (factor, factor, 1), order=1)


def ref_shift(image, dx, dy):
    if dx < 0:
        shifted = np.roll(image, shift=image.shape[1] + dx, axis=1)
        shifted[:, dx:] = shifted[:, dx - 1:dx]
    elif dx > 0:
        shifted = np.roll(image, shift=dx, axis=1)
        shifted[:, :dx] = shifted[:, dx:dx + 1]
    else:
        shifted = image
    if dy < 0:
        shifted = np.roll(shifted, shift=image.shape[0] + dy, axis=0)
        shifted[dy:, :] = shifted[dy - 1:dy, :]
    elif dy > 0:
        shifted = np.roll(shifted, shift=dy, axis=0)
        shifted[:dy, :] = shifted[dy:dy + 1, :]
    return shifted


def ref_motion_blur(x, radius, sigma, angle):
    width = radius * 2 + 1
    kernel = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2)) / (np.sqrt(2 * np.pi) * sigma)
    kernel = kernel / kernel.sum()
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    hypot = math.hypot(point[0], point[1])
    blurred = np.zeros_like(x, dtype=np.float32)
    for i in range(width):
        dy = -math.ceil(((i * point[0]) / hypot) - 0.5)
        dx = -math.ceil(((i * point[1]) / hypot) - 0.5)
        if np.abs(dy) >= x.shape[0] or np.abs(dx) >= x.shape[1]:
            break
        blurred = blurred + kernel[i] * ref_shift(x, dx, dy)
    return blurred


def ref_plasma(mapsize, wibbledecay, generator):
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100

    def wibbledmean(array):
        return array / 4 + wibble * generator.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(squareaccum)
        drgrid = maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = (drgrid + np.roll(drgrid, 1, axis=0)) + (ulgrid + np.roll(ulgrid, -1, axis=1))
        maparray[0:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(ltsum)
        ttsum = (drgrid + np.roll(drgrid, 1, axis=1)) + (ulgrid + np.roll(ulgrid, -1, axis=0))
        maparray[stepsize // 2:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def ref_rgb2hsv(rgb):  # scikit-image's color.rgb2hsv
    out = np.zeros_like(rgb)
    value = rgb.max(-1)
    delta = np.ptp(rgb, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        saturation = delta / value
        saturation[delta == 0.0] = 0.0
        hue = np.zeros_like(value)
        for channel, (a, b, offset) in ((0, (1, 2, 0.0)), (1, (2, 0, 2.0)), (2, (0, 1, 4.0))):
            where = rgb[..., channel] == value
            hue[where] = offset + (rgb[where][:, a] - rgb[where][:, b]) / delta[where]
    hue = (hue / 6.0) % 1.0
    hue[delta == 0.0] = 0.0
    out[..., 0], out[..., 1], out[..., 2] = hue, saturation, value
    return out


def ref_hsv2rgb(hsv):  # scikit-image's color.hsv2rgb
    hi = np.floor(hsv[..., 0] * 6)
    f = hsv[..., 0] * 6 - hi
    p = hsv[..., 2] * (1 - hsv[..., 1])
    q = hsv[..., 2] * (1 - f * hsv[..., 1])
    t = hsv[..., 2] * (1 - (1 - f) * hsv[..., 1])
    v = hsv[..., 2]
    hi = np.stack([hi, hi, hi], axis=-1).astype(np.uint8) % 6
    return np.choose(hi, np.stack([np.stack((v, t, p), axis=-1), np.stack((q, v, p), axis=-1),
                                   np.stack((p, v, t), axis=-1), np.stack((p, q, v), axis=-1),
                                   np.stack((t, p, v), axis=-1), np.stack((v, p, q), axis=-1)]))


def ref_disk(radius, alias_blur):
    span = np.arange(-8, 8 + 1) if radius <= 8 else np.arange(-radius, radius + 1)
    ksize = 3 if radius <= 8 else 5
    xs, ys = np.meshgrid(span, span)
    aliased = np.array((xs ** 2 + ys ** 2) <= radius ** 2, dtype=np.float64)
    aliased /= aliased.sum()
    # cv2.GaussianBlur(ksize, sigma) with its default border (reflect 101 = SciPy's 'mirror')
    taps = np.exp(-np.arange(-(ksize // 2), ksize // 2 + 1) ** 2 / (2 * alias_blur ** 2))
    taps /= taps.sum()
    aliased = ndi.correlate1d(aliased, taps, axis=0, mode="mirror")
    return ndi.correlate1d(aliased, taps, axis=1, mode="mirror")


def ref_glass_loop(x, max_delta, iterations, offsets):
    """The reference's loop, with its draws taken from ``offsets[i]`` ((rows, cols, 2) as (dx, dy))."""
    x = x.copy()
    height, width = x.shape[:2]
    for i in range(iterations):
        for row, h in enumerate(range(height - max_delta, max_delta, -1)):
            for col, w in enumerate(range(width - max_delta, max_delta, -1)):
                dx, dy = offsets[i][row, col]
                h_prime, w_prime = h + dy, w + dx
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]  # views: a copy, not a swap
    return x


def glass_offsets(generator, height, width, max_delta, iterations):
    rows, cols = len(range(height - max_delta, max_delta, -1)), len(range(width - max_delta, max_delta, -1))
    return [generator.integers(-max_delta, max_delta, size=(rows, cols, 2)) for _ in range(iterations)]


# -------------------------------------------------------------------------------- published parameters
GAUSSIAN = [.08, .12, 0.18, 0.26, 0.38]
SHOT = [60, 25, 12, 5, 3]
IMPULSE = [.03, .06, .09, 0.17, 0.27]
DEFOCUS = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)]
GLASS = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)]
MOTION = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)]
ZOOM = [np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02), np.arange(1, 1.26, 0.02),
        np.arange(1, 1.31, 0.03)]
SNOW = [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)]
FROST = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)]
FOG = [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)]
BRIGHTNESS = [.1, .2, .3, .4, .5]
CONTRAST = [0.4, .3, .2, .1, .05]
ELASTIC = [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12]
PIXELATE = [0.6, 0.5, 0.4, 0.3, 0.25]
JPEG = [25, 18, 15, 10, 7]
SEVERITIES = [1, 2, 3, 4, 5]


# ------------------------------------------------------------------------------------------------ tests
def test_the_fifteen_in_the_papers_order_and_families():
    assert list(CORRUPTIONS) == ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
                                 "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
                                 "elastic_transform", "pixelate", "jpeg_compression"]
    assert [name for family in FAMILIES.values() for name in family] == list(CORRUPTIONS)
    assert corruption_names(["blur", "fog", "defocus_blur"]) == ["defocus_blur", "glass_blur", "motion_blur",
                                                                  "zoom_blur", "fog"]
    with pytest.raises(ValueError, match="unknown corruption 'fgo'"):
        corruption_names(["fgo"])


@pytest.mark.parametrize("severity", SEVERITIES)
def test_noise(image, severity):
    x = image / 255.0
    generator = rng()
    expected = u8(np.clip(x + generator.normal(size=x.shape, scale=GAUSSIAN[severity - 1]), 0, 1) * 255)
    assert_close(corrupt(image, "gaussian_noise", severity, rng()), expected)
    c = SHOT[severity - 1]
    expected = u8(np.clip(rng().poisson(x * c) / float(c), 0, 1) * 255)
    assert_close(corrupt(image, "shot_noise", severity, rng()), expected)
    # scikit-image's random_noise(mode='s&p', amount=c): a Bernoulli flip per value, salt or pepper by a coin
    generator = rng()
    flipped = generator.random(x.shape) <= IMPULSE[severity - 1]
    salted = generator.random(x.shape) <= 0.5
    out = x.copy()
    out[flipped & salted], out[flipped & ~salted] = 1.0, 0.0
    assert_close(corrupt(image, "impulse_noise", severity, rng()), u8(np.clip(out, 0, 1) * 255))


@pytest.mark.parametrize("severity", SEVERITIES)
def test_brightness_contrast_pixelate_jpeg(image, severity):
    hsv = ref_rgb2hsv(image / 255.0)
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + BRIGHTNESS[severity - 1], 0, 1)
    expected = u8(np.clip(ref_hsv2rgb(hsv), 0, 1) * 255)
    assert_close(corrupt(image, "brightness", severity, rng()), expected)
    x = image / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    expected = u8(np.clip((x - means) * CONTRAST[severity - 1] + means, 0, 1) * 255)
    assert_close(corrupt(image, "contrast", severity, rng()), expected)
    c = PIXELATE[severity - 1]
    small = Image.fromarray(image).resize((int(96 * c), int(72 * c)), Image.BOX)
    assert_close(corrupt(image, "pixelate", severity, rng()), np.asarray(small.resize((96, 72), Image.NEAREST)))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=JPEG[severity - 1])
    assert_close(corrupt(image, "jpeg_compression", severity, rng()), np.asarray(Image.open(buffer)))


@pytest.mark.parametrize("severity", SEVERITIES)
def test_defocus_zoom_and_motion_blur(image, severity):
    x = image / 255.0
    kernel = ref_disk(*DEFOCUS[severity - 1])
    channels = np.stack([ndi.correlate(x[..., d], kernel, mode="mirror") for d in range(3)], axis=-1)
    # flat regions land exactly on whole levels, where truncation turns 1e-15 apart into one level apart
    assert_close(corrupt(image, "defocus_blur", severity, rng()), u8(np.clip(channels, 0, 1) * 255),
                 levels=1, share=0.05)

    xf = (image / 255.0).astype(np.float32)
    out = np.zeros_like(xf)
    for factor in ZOOM[severity - 1]:
        out += ref_zoom(xf, factor)[:72, :96, :]
    expected = u8(np.clip((xf + out) / (len(ZOOM[severity - 1]) + 1), 0, 1) * 255)
    assert_close(corrupt(image, "zoom_blur", severity, rng()), expected, levels=1, share=0.01)

    radius, sigma = MOTION[severity - 1]
    expected = u8(np.clip(ref_motion_blur(image, radius, sigma, rng().uniform(-45, 45)), 0, 255))
    assert_close(corrupt(image, "motion_blur", severity, rng()), expected, levels=1, share=0.05)


@pytest.mark.parametrize("max_delta, iterations", [(1, 2), (2, 3), (4, 2)])
def test_glass_shuffle_equals_the_sequential_loop(max_delta, iterations):
    x = np.random.default_rng(max_delta).integers(0, 256, size=(23, 31, 3), dtype=np.uint8)
    offsets = glass_offsets(rng(), 23, 31, max_delta, iterations)
    expected = ref_glass_loop(x, max_delta, iterations, offsets)
    assert np.array_equal(_glass_shuffle(x, max_delta, iterations, rng()), expected)
    assert not np.array_equal(expected, x)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_glass_blur(image, severity):
    sigma, max_delta, iterations = GLASS[severity - 1]
    blurred = u8(ref_gaussian(image / 255.0, sigma) * 255)
    shuffled = ref_glass_loop(blurred, max_delta, iterations, glass_offsets(rng(), 72, 96, max_delta, iterations))
    expected = u8(np.clip(ref_gaussian(shuffled / 255.0, sigma), 0, 1) * 255)
    # a one-level difference after the first blur can move with the shuffle: a few values may differ by one
    assert_close(corrupt(image, "glass_blur", severity, rng()), expected, levels=1, share=0.02)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_snow(image, severity):
    c = SNOW[severity - 1]
    generator = rng()
    x = np.array(image, dtype=np.float32) / 255.0
    layer = generator.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    layer = ref_zoom(layer[..., np.newaxis], c[2])
    layer[layer < c[3]] = 0
    layer = np.clip(layer.squeeze(), 0, 1)
    layer = ref_motion_blur(layer, radius=c[4], sigma=c[5], angle=generator.uniform(-135, -45))
    layer = np.round(layer * 255).astype(np.uint8) / 255.0
    layer = layer[..., np.newaxis][:72, :96, :]
    grey = (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]  # OpenCV's RGB2GRAY
    x = c[6] * x + (1 - c[6]) * np.maximum(x, grey * 1.5 + 0.5)
    expected = u8(np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255)
    assert_close(corrupt(image, "snow", severity, rng()), expected, levels=1, share=0.02)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_fog_and_frost(image, severity):
    strength, decay = FOG[severity - 1]
    x = image / 255.0
    max_value = x.max()
    x = x + strength * ref_plasma(128, decay, rng())[:72, :96][..., np.newaxis]  # 128: next power of 2 of 96
    assert_close(corrupt(image, "fog", severity, rng()), u8(np.clip(x * max_value / (max_value + strength), 0, 1)
                                                             * 255))
    # frost: the published blend of a random crop of a texture 1.1 times the size needed; the texture is
    # synthetic (see cvtrain.evaluation.corruptions), so that one piece is taken from cvtrain
    generator = rng()
    texture = frost_texture(int(generator.integers(5)))
    size = (int(np.ceil(texture.shape[1] * 1.1)), int(np.ceil(texture.shape[0] * 1.1)))
    import cv2

    texture = cv2.resize(texture, dsize=size, interpolation=cv2.INTER_CUBIC)
    top, left = generator.integers(0, texture.shape[0] - 72), generator.integers(0, texture.shape[1] - 96)
    image_weight, frost_weight = FROST[severity - 1]
    expected = u8(np.clip(image_weight * image + frost_weight * texture[top:top + 72, left:left + 96], 0, 255))
    assert_close(corrupt(image, "frost", severity, rng()), expected)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_elastic_transform(image, severity):
    generator = rng()
    x = np.array(image, dtype=np.float32) / 255.0
    shape = x.shape
    sigma = np.array(shape[:2]) * 0.01
    alpha = ELASTIC[severity - 1]
    max_d = shape[0] * 0.005
    dx = (ref_gaussian(generator.uniform(-max_d, max_d, size=shape[:2]), sigma, mode="reflect", truncate=3)
          * alpha).astype(np.float32)
    dy = (ref_gaussian(generator.uniform(-max_d, max_d, size=shape[:2]), sigma, mode="reflect", truncate=3)
          * alpha).astype(np.float32)
    xs, ys, zs = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = (np.reshape(ys + dy[..., None], (-1, 1)), np.reshape(xs + dx[..., None], (-1, 1)),
               np.reshape(zs, (-1, 1)))
    expected = u8(np.clip(ndi.map_coordinates(x, indices, order=1, mode="reflect").reshape(shape), 0, 1) * 255)
    assert_close(corrupt(image, "elastic_transform", severity, rng()), expected, levels=1, share=0.01)


def test_every_corruption_grows_with_severity_and_is_seeded(image):
    for name in CORRUPTIONS:
        change = [np.abs(corrupt(image, name, s, 0).astype(float) - image).mean() for s in SEVERITIES]
        assert change[-1] > change[0] > 0, (name, change)
        assert np.array_equal(corrupt(image, name, 3, 7), corrupt(image, name, 3, 7)), name
    assert not np.array_equal(corrupt(image, "gaussian_noise", 3, 7), corrupt(image, "gaussian_noise", 3, 8))


def test_grey_input_and_bad_arguments(image):
    grey = image[..., 0]
    assert corrupt(grey, "contrast", 2, 0).shape == (72, 96, 3)
    with pytest.raises(ValueError, match="severity must be 1 to 5"):
        corrupt(image, "fog", 6, 0)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(image.astype(np.float32), "fog", 1, 0)
