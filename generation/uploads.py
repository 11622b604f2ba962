"""Images people bring: an edit's source and an inpainting mask, checked before anything is made.

Every way in (the chat's composer and viewer, the OpenAI and AUTOMATIC1111 APIs, the
`generate` command) reads an uploaded image here, so one set of rules holds: PNG,
JPEG or WebP; at most MAX_UPLOAD_BYTES; at most MAX_SIDE pixels a side, checked from
the header before a pixel is decoded (so a decompression bomb is refused unread).
Pillow does the decoding; its own bomb guard stays on as a second line.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from django.core.exceptions import ValidationError
from PIL import Image, UnidentifiedImageError

MAX_UPLOAD_BYTES = 20 * 2**20
MAX_SIDE = 4096
FORMATS = ("PNG", "JPEG", "WEBP")

# How a mask marks what to repaint: OpenAI's transparent pixels, the chat's painted
# (opaque) ones, or AUTOMATIC1111's white ones.
TRANSPARENT = "transparent"
PAINTED = "painted"
WHITE = "white"


def read_image(data: bytes, *, label: str = "Image") -> Image.Image:
    """The uploaded bytes as an RGB(A) image, or a ValidationError that says what is wrong."""
    if not data:
        raise ValidationError(f"{label}: the file is empty.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValidationError(
            f"{label}: at most {MAX_UPLOAD_BYTES // 2**20} MB (this one is {len(data) / 2**20:.1f} MB)."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise ValidationError(f"{label}: a PNG, JPEG or WebP image, please (this is {image.format}).")
            if max(image.size) > MAX_SIDE:
                raise ValidationError(
                    f"{label}: at most {MAX_SIDE} pixels a side (this one is {image.width}x{image.height})."
                )
            image.load()
    except ValidationError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValidationError(f"{label}: too many pixels to open safely.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ValidationError(f"{label}: not an image that can be read (a PNG, JPEG or WebP, please).") from None
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    return image


def read_base64_image(text: str, *, label: str) -> Image.Image:
    """An image sent as base64 text, with or without a `data:` URL prefix (as A1111 clients send it)."""
    if not isinstance(text, str) or not text.strip():
        raise ValidationError(f"{label}: a base64-encoded image.")
    payload = text.split(",", 1)[1] if text.lstrip().startswith("data:") else text
    if len(payload) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise ValidationError(f"{label}: at most {MAX_UPLOAD_BYTES // 2**20} MB.")
    try:
        data = base64.b64decode(payload.strip(), validate=False)
    except (binascii.Error, ValueError):
        raise ValidationError(f"{label}: not valid base64.") from None
    return read_image(data, label=label)


def mask_from(image: Image.Image, *, size: tuple[int, int], marks: str, label: str = "Mask") -> Image.Image:
    """A mask as the pipelines take it (L: 255 = repaint, 0 = keep) from an uploaded one.

    It must be the source's size. `marks` says how the upload marks the area: by
    transparency (OpenAI: it must have an alpha channel), by paint, or by white.
    """
    if image.size != size:
        raise ValidationError(
            f"{label}: must be the same size as the image ({size[0]}x{size[1]}); "
            f"this one is {image.width}x{image.height}."
        )
    if marks in (TRANSPARENT, PAINTED):
        if image.mode != "RGBA":
            raise ValidationError(f"{label}: a PNG with transparency (an alpha channel) is needed.")
        alpha = image.getchannel("A")
        mask = alpha.point(lambda value: 255 if value < 128 else 0) if marks == TRANSPARENT else alpha
        mask = mask.point(lambda value: 255 if value >= 128 else 0)
    else:
        mask = image.convert("L").point(lambda value: 255 if value >= 128 else 0)
    if mask.getextrema() == (0, 0):
        raise ValidationError(f"{label}: nothing is marked to change.")
    return mask


def png_bytes(image: Image.Image) -> bytes:
    """The image as a plain PNG (no metadata carried over from the upload)."""
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()
