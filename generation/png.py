"""PNG files for finished images, written fast enough to stay off the GPU's path.

Pillow's PNG writer spends about 25 ms on a 512x512 image (adaptive row filters,
then zlib), longer than a whole job's bookkeeping should take. A generated image
needs neither: every row gets the "Up" filter (one vectorised subtraction, which
suits smooth pictures) and the rows are deflated by ISA-L (`isal`, Intel's
compression library, a drop-in for `zlib`), which at its level 1 is about six times
faster than zlib's and compresses better. The file is a plain PNG that any reader
opens; the generation parameters travel as a text chunk named "parameters", where
AUTOMATIC1111-style tools look for them.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from isal import isal_zlib
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {"RGB": 2, "RGBA": 6}
FILTER_UP = 2
LEVEL = 1


def encode_png(image: Image.Image, *, parameters: str = "") -> bytes:
    """The image as PNG bytes, with `parameters` as its text chunk when given."""
    if image.mode not in COLOR_TYPES:
        image = image.convert("RGB")
    pixels = np.asarray(image, dtype=np.uint8)
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = FILTER_UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as PNG wants
    header = struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPES[image.mode], 0, 0, 0)
    chunks = [_chunk(b"IHDR", header)]
    if parameters:
        chunks.append(_text_chunk("parameters", parameters))
    chunks.append(_chunk(b"IDAT", isal_zlib.compress(filtered.tobytes(), LEVEL)))
    chunks.append(_chunk(b"IEND", b""))
    return SIGNATURE + b"".join(chunks)


def _text_chunk(key: str, value: str) -> bytes:
    # tEXt holds Latin-1; anything else goes in an uncompressed, untagged iTXt (UTF-8).
    try:
        return _chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        return _chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8"))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
