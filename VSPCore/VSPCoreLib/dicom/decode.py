"""Decode the pixels of a series' slices and rescale them to HU.

Uncompressed little-endian pixel data is read straight from the file at the offset found
during the header scan (numpy, in a small thread pool); compressed transfer syntaxes go through
pydicom's pixel handlers (pylibjpeg, pyjpegls, pydicom's own RLE decoder). Voxels are HU after
the per-slice RescaleSlope/RescaleIntercept: ``int16`` when every slice has an integer slope and
intercept and the HU fit in int16, otherwise ``float32``.
"""

from __future__ import annotations

import io
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import numpy as np
import pydicom
from pydicom import uid as dcm_uid

from ..errors import InputDataError
from ..progress import ProgressCallback, report
from .header import _NATIVE_LITTLE_ENDIAN, _FileHeader, _reason, _syntax_name

# Which package decodes which transfer syntax, for the fix in an error message.
_DECODER_PACKAGES = {
    dcm_uid.JPEGBaseline8Bit: "pylibjpeg-libjpeg (or Pillow)",
    dcm_uid.JPEGExtended12Bit: "pylibjpeg-libjpeg (or Pillow)",
    dcm_uid.JPEGLossless: "pylibjpeg-libjpeg",
    dcm_uid.JPEGLosslessSV1: "pylibjpeg-libjpeg",
    dcm_uid.JPEGLSLossless: "pyjpegls (or pylibjpeg-libjpeg)",
    dcm_uid.JPEGLSNearLossless: "pyjpegls (or pylibjpeg-libjpeg)",
    dcm_uid.JPEG2000Lossless: "pylibjpeg-openjpeg",
    dcm_uid.JPEG2000: "pylibjpeg-openjpeg",
    dcm_uid.HTJ2KLossless: "pylibjpeg-openjpeg",
    dcm_uid.HTJ2KLosslessRPCL: "pylibjpeg-openjpeg",
    dcm_uid.HTJ2K: "pylibjpeg-openjpeg",
    dcm_uid.RLELossless: "pydicom (built in) or pylibjpeg-rle",
}


def _check_decodable(headers: list[_FileHeader]) -> None:
    from pydicom.pixels import get_decoder

    checked: set[str] = set()
    for h in headers:
        ts = h.transfer_syntax
        if ts in checked or (ts in _NATIVE_LITTLE_ENDIAN and h.pixel_offset is not None):
            continue
        checked.add(ts)
        name = _syntax_name(ts)
        try:
            decoder = get_decoder(dcm_uid.UID(ts))
        except NotImplementedError:
            raise InputDataError(
                f"uses transfer syntax {name} ({ts}), which no installed pixel data decoder can read.",
                subject=str(h.path),
                fix="Ask the PACS or scanner to export the series uncompressed (Explicit VR Little "
                "Endian) or with JPEG 2000 / JPEG Lossless / RLE compression.",
            ) from None
        if not decoder.is_available:
            package = _DECODER_PACKAGES.get(ts, "a pydicom pixel data plugin for it")
            raise InputDataError(
                f"uses transfer syntax {name} ({ts}), whose decoder is not installed.",
                subject=str(h.path),
                fix=f"Install {package} (pip install into the Slicer/venv Python), or export the "
                "series uncompressed.",
            )


def _is_integral(value: float) -> bool:
    return abs(value - round(value)) < 1e-9


def _choose_dtype(headers: list[_FileHeader]) -> np.dtype:
    if all(_is_integral(h.slope) and _is_integral(h.intercept) for h in headers):
        return np.dtype(np.int16)
    return np.dtype(np.float32)


def _read_pixels(
    headers: list[_FileHeader], dtype: np.dtype, max_workers: int, progress: ProgressCallback | None
) -> np.ndarray:
    """Decode every slice (in slice order), rescale to HU, stack as ``[k, j, i]``.

    Workers write their slice straight into the output. When int16 was chosen but a slice's HU
    leave the int16 range (rare: 16-bit unsigned data, odd intercepts), everything is read again
    as float32 so that every value stays exact.
    """
    rows, columns = headers[0].rows, headers[0].columns
    out = np.empty((len(headers), rows, columns), dtype=dtype)
    total = len(headers)
    step = max(1, total // 50)

    def work(k: int) -> bool:
        hu = _slice_hu(headers[k], dtype)
        if dtype == np.int16 and (int(hu.min()) < -32768 or int(hu.max()) > 32767):
            return False
        out[k] = hu
        return True

    fits = True
    with warnings.catch_warnings():
        # pydicom's warnings may quote header values (see scan_files): keep them out of logs.
        warnings.simplefilter("ignore")
        pool = ThreadPoolExecutor(max_workers=max(1, max_workers))
        futures = [pool.submit(work, k) for k in range(total)]
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                fits &= future.result()
                if done % step == 0 or done == total:
                    report(progress, done / total, f"Reading slices ({done}/{total})")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    if not fits:
        del out
        return _read_pixels(headers, np.dtype(np.float32), max_workers, progress)
    return out


def _slice_hu(h: _FileHeader, dtype: np.dtype) -> np.ndarray:
    """One slice in HU: int16/int32 for integer rescale (int16 target), float64 otherwise."""
    raw = _decode_slice(h)
    if dtype == np.int16:
        slope, intercept = int(round(h.slope)), int(round(h.intercept))
        if raw.dtype == np.int16 and slope == 1 and intercept == 0:
            return raw
        hu = raw.astype(np.int32)
        if slope != 1:
            hu *= slope
        if intercept != 0:
            hu += intercept
        return hu
    return raw.astype(np.float64) * h.slope + h.intercept


def _decode_slice(h: _FileHeader) -> np.ndarray:
    rows, columns = h.rows, h.columns
    expected = rows * columns
    itemsize = (h.bits_allocated or 16) // 8
    if (
        h.pixel_offset is not None
        and h.bits_allocated in (8, 16, 32)
        and h.pixel_length >= expected * itemsize
    ):
        # Native little endian: read the bytes in place; no need to parse the file again.
        kind = "i" if h.pixel_representation == 1 else "u"
        raw_dtype = np.dtype(f"<{kind}{itemsize}")
        try:
            raw = np.fromfile(h.path, dtype=raw_dtype, count=expected, offset=h.pixel_offset)
        except OSError as exc:
            raise _corrupt(h, f"cannot be read ({_reason(exc)})") from exc
        if raw.size != expected:
            raise _corrupt(
                h,
                f"is truncated: Pixel Data should hold {expected * itemsize} bytes but the file ends after "
                f"{raw.size * itemsize}",
            )
        raw = raw.reshape(rows, columns)
        return _mask_bits(raw, h)
    if h.pixel_offset is not None and h.pixel_length is not None and h.pixel_length < expected * itemsize:
        raise _corrupt(
            h,
            f"has {h.pixel_length} bytes of Pixel Data, {expected * itemsize} expected for {columns}x{rows}",
        )
    try:
        data = h.path.read_bytes()
    except OSError as exc:
        raise _corrupt(h, f"cannot be read ({_reason(exc)})") from exc
    if h.encapsulated_offset is not None:
        _check_encapsulated(h, data)
    try:
        # force: the scan already accepted the file, with or without the "DICM" preamble.
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        options: dict[str, Any] = {}
        if h.transfer_syntax in (dcm_uid.JPEG2000, dcm_uid.JPEG2000Lossless):
            # pylibjpeg (OpenJPEG) handles signed and >8-bit JPEG 2000 fully; prefer it to Pillow.
            from pydicom.pixels import get_decoder

            if "pylibjpeg" in get_decoder(dcm_uid.UID(h.transfer_syntax)).available_plugins:
                options["decoding_plugin"] = "pylibjpeg"
        if options:
            ds.pixel_array_options(**options)
        arr = ds.pixel_array
    except InputDataError:
        raise
    except Exception as exc:
        raise _corrupt(
            h, f"could not be decoded ({_syntax_name(h.transfer_syntax)}): {_reason(exc)}"
        ) from exc
    if arr.shape != (rows, columns):
        raise _corrupt(h, f"decoded to shape {arr.shape}, expected {(rows, columns)}")
    return arr


def _check_encapsulated(h: _FileHeader, data: bytes) -> None:
    """Walk the items of encapsulated Pixel Data up to its delimiter.

    pydicom accepts a file cut inside its compressed pixel data, and JPEG 2000 decoders happily
    decode a truncated code stream into a blurred image: without this check a damaged slice
    would load silently.
    """
    pos = h.encapsulated_offset
    while True:
        if pos + 8 > len(data):
            raise _corrupt(h, "is truncated: its compressed Pixel Data ends without the closing delimiter")
        group, element, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        if (group, element) == (0xFFFE, 0xE0DD):
            return
        if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            raise _corrupt(h, f"has a damaged compressed Pixel Data item at byte {pos - 8}")
        pos += length
        if pos > len(data):
            raise _corrupt(h, "is truncated: a compressed Pixel Data fragment runs past the end of the file")


def _mask_bits(raw: np.ndarray, h: _FileHeader) -> np.ndarray:
    """Keep only BitsStored bits (sign-extended for signed data), as the standard defines."""
    stored, allocated = h.bits_stored, h.bits_allocated
    if not stored or not allocated or stored >= allocated:
        return raw
    if h.pixel_representation == 1:
        shift = allocated - stored
        return ((raw << shift) >> shift).astype(raw.dtype)
    return raw & np.array((1 << stored) - 1, dtype=raw.dtype)


def _corrupt(h: _FileHeader, what: str) -> InputDataError:
    return InputDataError(
        what + ".",
        subject=str(h.path),
        fix="The file is damaged or incomplete: copy or export it again from the scanner or PACS.",
    )
