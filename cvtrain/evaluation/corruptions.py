"""The 15 common corruptions of Hendrycks & Dietterich (ICLR 2019), five severities each.

Parameters are the published ones (``hendrycks/robustness``, ``ImageNet-C/create_c/make_imagenet_c.py``),
in the form that works on images of any size given them by Michaelis et al. (2019) in the
``imagecorruptions`` package (the COCO-C / MMDetection robustness benchmark). That package is not a
dependency: it needs scikit-image and numba and breaks on current scikit-image. The formulas are
re-implemented here on NumPy and OpenCV, with these deliberate differences, none of which changes a
parameter:

- Randomness comes from the ``numpy.random.Generator`` passed in (seeded per image, corruption and
  severity by the caller), not from NumPy's global state.
- ``glass_blur`` is vectorised. The reference walks the image pixel by pixel in reverse raster order;
  because it indexes RGB pixels as views, its "swap" ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` copies
  ``x[h', w']`` into ``x[h, w]`` and leaves ``x[h', w']`` as it was. ``_glass_shuffle`` computes exactly
  that sequential result (same offsets, same order) with pointer jumping over whole arrays.
- ``frost`` blends a frost texture into the image. The reference ships six photographs of frost; here
  the textures are synthesised deterministically (``frost_texture``: a plasma-fractal haze and crinkled
  ice ridges in icy blue-grey, with the photographs' mean and spread), so the severities blend the same
  amounts of texture, but not the same picture.
- ``motion_blur`` is the reference's shift-and-add along a line, computed as one OpenCV correlation with
  the same weights and the same edge replication.
- Gaussian filters (scikit-image in the reference) are OpenCV filters with scikit-image's kernel radius
  and border; zooms (SciPy in the reference) are OpenCV affine warps on SciPy's corner-aligned grid.

Every corruption takes an RGB ``uint8`` array ``(H, W, 3)`` and returns one of the same shape, truncating
floats to ``uint8`` as ``imagecorruptions.corrupt`` does.
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
CORRUPTIONS: dict[str, Corruption] = {}  # name -> function, in the paper's order
FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
SEVERITIES = (1, 2, 3, 4, 5)

# The published parameters, severity 1..5 (make_imagenet_c.py; elastic_transform as imagecorruptions).
PARAMETERS: dict[str, tuple] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # standard deviation, on [0, 1] intensities
    "shot_noise": (60, 25, 12, 5, 3),  # Poisson photon count at full intensity
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),  # share of salt-and-pepper values
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),  # disk radius, anti-alias sigma
    "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),  # sigma, max delta, iterations
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),  # radius, sigma
    "zoom_blur": (np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
                  np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03)),  # zoom factors averaged
    # snow: mean, std of the flake layer, zoom, threshold, blur radius, blur sigma, image weight
    "snow": ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
             (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
    "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),  # image weight, frost weight
    "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),  # fog strength, fractal wibble decay
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # added to HSV value
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),  # factor on the distance to the channel mean
    "elastic_transform": (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12),  # alpha
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),  # downscale factor
    "jpeg_compression": (25, 18, 15, 10, 7),  # JPEG quality
}


def _register(function: Corruption) -> Corruption:
    if function.__name__ in CORRUPTIONS:
        raise ValueError(f"corruption {function.__name__!r} registered twice")
    CORRUPTIONS[function.__name__] = function
    return function


def corruption_names(names: str | list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Corruption names from names and family names (``noise``, ``blur``, ``weather``, ``digital``, ``all``).

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    if names is None or names == "all":
        return list(CORRUPTIONS)
    chosen: list[str] = []
    for name in [names] if isinstance(names, str) else names:
        expanded = list(CORRUPTIONS) if name == "all" else FAMILIES.get(name, (name,))
        for item in expanded:
            if item not in CORRUPTIONS:
                known = ", ".join([*CORRUPTIONS, *FAMILIES, "all"])
                raise ValueError(f"unknown corruption {item!r}; known: {known}")
            if item not in chosen:
                chosen.append(item)
    return chosen


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator | int) -> np.ndarray:
    """Apply one corruption at one severity.

    Args:
        image: RGB ``uint8`` ``(H, W, 3)`` (a grey ``(H, W)`` image is stacked to three channels).
        name: a name of ``CORRUPTIONS``.
        severity: 1 to 5.
        rng: a NumPy ``Generator``, or a seed for one.

    Returns:
        The corrupted ``uint8`` image, same shape as the RGB input.

    Raises:
        ValueError: unknown corruption, severity outside 1..5, or an image that is not ``uint8``.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1 to 5, got {severity!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    return CORRUPTIONS[name](np.ascontiguousarray(image), severity, rng)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Float values in [0, 255] to ``uint8`` by truncation, as ``np.uint8(...)`` in imagecorruptions."""
    return np.clip(x, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- helpers
def gaussian(x: np.ndarray, sigma: float | tuple[float, float], *, truncate: float = 4.0,
             mode: str = "nearest") -> np.ndarray:
    """scikit-image's ``filters.gaussian`` over the two image axes (channels apart): kernel radius
    ``int(truncate * sigma + 0.5)``, border ``nearest`` (edge replicated) or ``reflect``."""
    sigma_y, sigma_x = (sigma, sigma) if np.isscalar(sigma) else sigma
    size = (2 * int(truncate * sigma_x + 0.5) + 1, 2 * int(truncate * sigma_y + 0.5) + 1)
    border = {"nearest": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT}[mode]
    return cv2.GaussianBlur(np.asarray(x, dtype=np.float64), size, sigmaX=float(sigma_x), sigmaY=float(sigma_y),
                            borderType=border)


def disk(radius: float, alias_blur: float) -> np.ndarray:
    """The defocus kernel: a normalised disk of ``radius``, anti-aliased by a small Gaussian."""
    if radius <= 8:
        span, ksize = np.arange(-8, 8 + 1), (3, 3)
    else:
        span, ksize = np.arange(-radius, radius + 1), (5, 5)
    xs, ys = np.meshgrid(span, span)
    aliased = np.array((xs ** 2 + ys ** 2) <= radius ** 2, dtype=np.float32)
    aliased /= np.sum(aliased)
    return cv2.GaussianBlur(aliased, ksize=ksize, sigmaX=alias_blur)


def zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """``scipy.ndimage.zoom(x, (factor, factor[, 1]), order=1)``: output ``round(size * factor)``, the
    corners of input and output aligned (SciPy's default grid), bilinear."""
    height, width = x.shape[:2]
    out_h, out_w = int(round(height * factor)), int(round(width * factor))
    matrix = np.array([[(width - 1) / max(out_w - 1, 1), 0, 0], [0, (height - 1) / max(out_h - 1, 1), 0]])
    # float32: OpenCV warps float64 on a coarse fixed-point grid (errors of 1e-2), float32 exactly (1e-6)
    source = np.ascontiguousarray(x, dtype=np.float32)
    out = cv2.warpAffine(source, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(out_h, out_w, *x.shape[2:]).astype(x.dtype if x.dtype.kind == "f" else np.float32)


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """The centre ``ceil(size / factor)`` crop zoomed by ``factor`` (at least the input's size; the caller
    keeps the top-left ``H x W``, as imagecorruptions does)."""
    crop_h, crop_w = int(np.ceil(x.shape[0] / float(factor))), int(np.ceil(x.shape[1] / float(factor)))
    top, left = (x.shape[0] - crop_h) // 2, (x.shape[1] - crop_w) // 2
    return zoom(x[top:top + crop_h, left:left + crop_w], factor)


def motion_kernel(radius: int, sigma: float, angle: float, shape: tuple[int, int]) -> np.ndarray:
    """The correlation kernel equal to imagecorruptions' ``_motion_blur``: ``2 radius + 1`` copies of the
    image shifted along ``angle`` (degrees), weighted by a one-sided Gaussian of ``sigma``."""
    width = radius * 2 + 1
    weights = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2)) / (np.sqrt(2 * np.pi) * sigma)
    weights = weights / np.sum(weights)
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    hypot = math.hypot(point[0], point[1])
    offsets = []
    for i in range(width):
        dy = -math.ceil(((i * point[0]) / hypot) - 0.5)
        dx = -math.ceil(((i * point[1]) / hypot) - 0.5)
        if abs(dy) >= shape[0] or abs(dx) >= shape[1]:
            break  # the simulated motion left the image
        offsets.append((dy, dx, weights[i]))
    reach = max(max(abs(dy), abs(dx)) for dy, dx, _ in offsets)
    kernel = np.zeros((2 * reach + 1, 2 * reach + 1), dtype=np.float64)
    for dy, dx, weight in offsets:
        kernel[reach - dy, reach - dx] += weight  # out[y, x] += weight * in[y - dy, x - dx]
    return kernel


def motion_blur_array(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """imagecorruptions' ``_motion_blur`` (edges replicated) on a 2-D or ``(H, W, C)`` array, in float64."""
    kernel = motion_kernel(radius, sigma, angle, x.shape[:2])
    out = cv2.filter2D(np.asarray(x, dtype=np.float64), -1, kernel, borderType=cv2.BORDER_REPLICATE)
    return out.reshape(x.shape)


def plasma_fractal(mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """A square ``mapsize`` (a power of two) height map in [0, 1] by the diamond-square algorithm, as in
    ImageNet-C (itself from FLHerne/mapgen); the random draws are made in the reference's order."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100.0

    def wibbledmean(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        # squares: each square's centre is the mean of its corners, plus noise
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        square = corners + np.roll(corners, shift=-1, axis=0)
        square += np.roll(square, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(square)
        # diamonds: each edge midpoint is the mean of its two corners and two centres, plus noise
        centres = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        left = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(left)
        top = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(top)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def _next_power_of_2(value: int) -> int:
    return 1 if value == 0 else 2 ** (value - 1).bit_length()


def _glass_shuffle(x: np.ndarray, max_delta: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """The local pixel shuffle of glass blur, vectorised, equal to the reference's sequential loop.

    The reference visits ``h`` from ``H - d`` down to ``d + 1`` and, within a row, ``w`` from ``W - d`` down
    to ``d + 1``, draws ``(dx, dy)`` uniform in ``[-d, d - 1]`` and sets ``x[h, w] = x[h + dy, w + dx]``
    (its tuple "swap" of RGB views is a copy). A pixel therefore reads its source's *current* value:
    the updated one when the source was visited earlier in this pass. Each visited pixel points at its
    source while that source was visited earlier, and at nothing otherwise; following the pointers to the
    end (pointer jumping, ``log2`` of the longest chain steps) gives, for each pixel, the original pixel
    whose value it ends up with.
    """
    height, width = x.shape[:2]
    rows = np.arange(height - max_delta, max_delta, -1)  # visiting order
    cols = np.arange(width - max_delta, max_delta, -1)
    if len(rows) == 0 or len(cols) == 0:
        return x
    flat = x.reshape(height * width, -1)
    order = np.full((height, width), -1, dtype=np.int64)  # visiting position; -1: never visited
    order[np.ix_(rows, cols)] = np.arange(len(rows) * len(cols)).reshape(len(rows), len(cols))
    hh, ww = np.meshgrid(rows, cols, indexing="ij")
    targets = (hh * width + ww).ravel()
    for _ in range(iterations):
        offsets = rng.integers(-max_delta, max_delta, size=(len(rows), len(cols), 2))  # (dx, dy) per pixel
        sources = ((hh + offsets[..., 1]) * width + (ww + offsets[..., 0])).ravel()
        source_order = order.ravel()[sources]
        chained = (source_order >= 0) & (source_order < order.ravel()[targets])
        link = np.arange(height * width)
        link[targets[chained]] = sources[chained]
        read = np.arange(height * width)
        read[targets[~chained]] = sources[~chained]
        while True:
            jumped = link[link]
            if np.array_equal(jumped, link):
                break
            link = jumped
        flat = flat[read[link]]
    return flat.reshape(x.shape)


@lru_cache(maxsize=8)
def frost_texture(index: int, height: int = 600, width: int = 900) -> np.ndarray:
    """A synthetic frost texture (RGB ``uint8``), the same for the same ``index`` everywhere.

    Stands in for imagecorruptions' six photographs of frost (not redistributed here): a low-frequency
    plasma-fractal haze plus thin crinkled ridges (the gradient magnitude of blurred noise), tinted
    icy blue-grey, with about the photographs' mean (~ 110, 140, 155) and spread (~ 30 per channel).
    """
    rng = np.random.default_rng([7919, index])
    size = _next_power_of_2(max(height, width))
    haze = plasma_fractal(size, 1.6, rng)[:height, :width]
    noise = gaussian(rng.random((height, width)), 1.2 + 0.3 * index)
    gy, gx = np.gradient(noise)
    ridges = np.sqrt(gx ** 2 + gy ** 2)
    ridges = (ridges - ridges.mean()) / (ridges.std() + 1e-12)
    haze = (haze - haze.mean()) / (haze.std() + 1e-12)
    pattern = 0.65 * haze + 0.55 * ridges
    pattern = (pattern - pattern.mean()) / (pattern.std() + 1e-12)
    means, spreads = np.array([110.0, 140.0, 155.0]), np.array([34.0, 30.0, 28.0])
    texture = means + spreads * pattern[..., None]
    return np.clip(texture, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ corruptions
@_register
def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = PARAMETERS["gaussian_noise"][severity - 1]
    x = x / 255.0
    return _to_uint8(np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255)


@_register
def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = PARAMETERS["shot_noise"][severity - 1]
    x = x / 255.0
    return _to_uint8(np.clip(rng.poisson(x * c) / float(c), 0, 1) * 255)


@_register
def impulse_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """scikit-image's ``random_noise(mode='s&p', amount=c)``: each value flips with probability ``c``,
    to 1 or 0 with equal odds."""
    c = PARAMETERS["impulse_noise"][severity - 1]
    out = x / 255.0
    flipped = rng.random(out.shape) <= c
    salted = rng.random(out.shape) <= 0.5
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return _to_uint8(np.clip(out, 0, 1) * 255)


@_register
def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, alias_blur = PARAMETERS["defocus_blur"][severity - 1]
    blurred = cv2.filter2D(x / 255.0, -1, disk(radius, alias_blur))  # border: reflect 101, as the reference
    return _to_uint8(np.clip(blurred, 0, 1) * 255)


@_register
def glass_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma, max_delta, iterations = PARAMETERS["glass_blur"][severity - 1]
    blurred = (gaussian(x / 255.0, sigma) * 255).astype(np.uint8)
    shuffled = _glass_shuffle(blurred, max_delta, iterations, rng)
    return _to_uint8(np.clip(gaussian(shuffled / 255.0, sigma), 0, 1) * 255)


@_register
def motion_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = PARAMETERS["motion_blur"][severity - 1]
    angle = rng.uniform(-45, 45)
    return _to_uint8(motion_blur_array(x, radius, sigma, angle))


@_register
def zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    factors = PARAMETERS["zoom_blur"][severity - 1]
    height, width = x.shape[:2]
    x = (x / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for factor in factors:
        out += clipped_zoom(x, factor)[:height, :width]
    x = (x + out) / (len(factors) + 1)
    return _to_uint8(np.clip(x, 0, 1) * 255)


@_register
def snow(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    mean, std, factor, threshold, radius, sigma, weight = PARAMETERS["snow"][severity - 1]
    height, width = x.shape[:2]
    x = np.array(x, dtype=np.float32) / 255.0
    layer = rng.normal(size=(height, width), loc=mean, scale=std)
    layer = clipped_zoom(layer, factor)
    layer[layer < threshold] = 0
    layer = np.clip(layer, 0, 1)
    layer = motion_blur_array(layer, radius, sigma, rng.uniform(-135, -45))
    layer = np.round(layer * 255).astype(np.uint8) / 255.0  # the reference rounds the layer to 8 bits
    layer = layer[:height, :width, None]
    grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(height, width, 1)
    x = weight * x + (1 - weight) * np.maximum(x, grey * 1.5 + 0.5)
    return _to_uint8(np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255)


@_register
def frost(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    image_weight, frost_weight = PARAMETERS["frost"][severity - 1]
    texture = frost_texture(int(rng.integers(5)))  # the reference draws one of its first five textures
    (frost_h, frost_w), (height, width) = texture.shape[:2], x.shape[:2]
    # scale the texture up until it covers the image, then 10 % more, as imagecorruptions does
    scale = 1.0
    if frost_h < height or frost_w < width:
        scale = max(height / frost_h if frost_h < height else 0, width / frost_w if frost_w < width else 0)
    scale *= 1.1
    size = (int(np.ceil(frost_w * scale)), int(np.ceil(frost_h * scale)))
    texture = cv2.resize(texture, dsize=size, interpolation=cv2.INTER_CUBIC)
    top = rng.integers(0, texture.shape[0] - height)
    left = rng.integers(0, texture.shape[1] - width)
    crop = texture[top:top + height, left:left + width]
    return _to_uint8(image_weight * np.asarray(x, dtype=np.float64) + frost_weight * crop)


@_register
def fog(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    strength, decay = PARAMETERS["fog"][severity - 1]
    height, width = x.shape[:2]
    mapsize = _next_power_of_2(int(max(height, width, x.shape[2] if x.ndim == 3 else 0)))
    x = x / 255.0
    max_value = x.max()
    x = x + strength * plasma_fractal(mapsize, decay, rng)[:height, :width][..., None]
    return _to_uint8(np.clip(x * max_value / (max_value + strength), 0, 1) * 255)


@_register
def brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """``c`` added to the HSV value, through scikit-image's ``rgb2hsv`` / ``hsv2rgb`` formulas."""
    c = PARAMETERS["brightness"][severity - 1]
    hsv = _rgb_to_hsv(x / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return _to_uint8(np.clip(_hsv_to_rgb(hsv), 0, 1) * 255)


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """scikit-image's ``color.rgb2hsv`` on ``(H, W, 3)`` floats in [0, 1]."""
    value = rgb.max(axis=-1)
    delta = value - rgb.min(axis=-1)
    grey = delta == 0
    safe_delta = np.where(grey, 1.0, delta)
    saturation = np.where(grey, 0.0, delta / np.where(value == 0, 1.0, value))
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.where(red == value, (green - blue) / safe_delta, 0.0)
    hue = np.where(green == value, 2.0 + (blue - red) / safe_delta, hue)  # later channels win ties, as there
    hue = np.where(blue == value, 4.0 + (red - green) / safe_delta, hue)
    hue = np.where(grey, 0.0, (hue / 6.0) % 1.0)
    return np.stack([hue, saturation, value], axis=-1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """scikit-image's ``color.hsv2rgb``."""
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = np.floor(hue * 6)
    f = hue * 6 - sector
    p = value * (1 - saturation)
    q = value * (1 - f * saturation)
    t = value * (1 - (1 - f) * saturation)
    sector = sector.astype(np.int64) % 6
    choices = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)]
    out = np.empty_like(hsv)
    for channel in range(3):
        out[..., channel] = np.choose(sector, [choice[channel] for choice in choices])
    return out


@_register
def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = PARAMETERS["contrast"][severity - 1]
    x = x / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return _to_uint8(np.clip((x - means) * c + means, 0, 1) * 255)


@_register
def elastic_transform(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """imagecorruptions' size-independent form: displacement fields of uniform noise smoothed by a
    Gaussian of 1 % of the image size, scaled by ``alpha``; bilinear resampling with mirrored borders."""
    alpha = PARAMETERS["elastic_transform"][severity - 1]
    image = np.array(x, dtype=np.float32) / 255.0
    height, width = image.shape[:2]
    sigma = (height * 0.01, width * 0.01)
    max_dx = max_dy = height * 0.005  # both from the height, as in the reference
    dx = (gaussian(rng.uniform(-max_dx, max_dx, size=(height, width)), sigma, mode="reflect", truncate=3)
          * alpha).astype(np.float32)
    dy = (gaussian(rng.uniform(-max_dy, max_dy, size=(height, width)), sigma, mode="reflect", truncate=3)
          * alpha).astype(np.float32)
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    warped = _bilinear_reflect(image, ys + dy.astype(np.float64), xs + dx.astype(np.float64))
    return _to_uint8(np.clip(warped, 0, 1) * 255)


def _bilinear_reflect(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.map_coordinates(order=1, mode='reflect')`` per channel, vectorised over channels:
    the two neighbours along each axis, mirrored at the border (``d c b a | a b c d``)."""
    height, width = image.shape[:2]
    y0, x0 = np.floor(ys), np.floor(xs)
    fy, fx = (ys - y0).astype(np.float32)[..., None], (xs - x0).astype(np.float32)[..., None]
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)

    def mirror(index: np.ndarray, size: int) -> np.ndarray:
        index = np.where(index < 0, -index - 1, index)
        index = np.where(index >= size, 2 * size - 1 - index, index)
        return np.clip(index, 0, size - 1)  # displacements of more than the image size: stay inside

    ya, yb = mirror(y0, height) * width, mirror(y0 + 1, height) * width
    xa, xb = mirror(x0, width), mirror(x0 + 1, width)
    flat = image.reshape(height * width, -1)
    top = np.take(flat, ya + xa, axis=0) * (1 - fx) + np.take(flat, ya + xb, axis=0) * fx
    bottom = np.take(flat, yb + xa, axis=0) * (1 - fx) + np.take(flat, yb + xb, axis=0) * fx
    return top * (1 - fy) + bottom * fy


@_register
def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = PARAMETERS["pixelate"][severity - 1]
    height, width = x.shape[:2]
    image = Image.fromarray(x).resize((int(width * c), int(height * c)), Image.BOX)
    return np.asarray(image.resize((width, height), Image.NEAREST))


@_register
def jpeg_compression(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    quality = PARAMETERS["jpeg_compression"][severity - 1]
    buffer = io.BytesIO()
    Image.fromarray(x).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))
