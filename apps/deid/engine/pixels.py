"""Burned-in text in pixel data: find it with offline OCR, mask it, touch nothing else.

Native (uncompressed) pixel data is edited through a view of the raw bytes, so every pixel
outside a masked box stays bit-identical, including bits above BitsStored. Compressed pixel
data is decoded only when a box must be masked; RLE Lossless is re-encoded as RLE, any other
compressed syntax is written as Explicit VR Little Endian with the matching transfer syntax.
Very large images are screened on a downsampled copy first and only suspicious regions are
read again at full resolution (plus the top and bottom banner bands, where devices print
demographics).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, RLELossless

from .errors import UnsupportedInputError
from .profile import OcrSettings
from .text.engine import PatientContext, TextDeidentifier


@dataclass(frozen=True)
class OcrBox:
    """An axis-aligned text box in image coordinates (x1/y1 exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int
    text: str
    score: float


class OcrEngine(Protocol):
    """What the cleaner needs from an OCR engine."""

    def detect(self, rgb: np.ndarray) -> list[OcrBox]:
        """Text boxes in an ``(rows, cols, 3)`` uint8 RGB image."""
        ...


class RapidOcrEngine:
    """RapidOCR 1.4.x (PP-OCRv4 det/rec models inside the wheel; never downloads)."""

    def __init__(self) -> None:
        self._engine: Any = None

    def _load(self) -> Any:
        if self._engine is None:
            from rapidocr_onnxruntime import RapidOCR

            self._engine = RapidOCR()
        return self._engine

    def detect(self, rgb: np.ndarray) -> list[OcrBox]:
        """Run detection + recognition; returns boxes with their text and score."""
        result, _ = self._load()(np.ascontiguousarray(rgb))
        boxes: list[OcrBox] = []
        for quad, text, score in result or []:
            xs = [p[0] for p in quad]
            ys = [p[1] for p in quad]
            boxes.append(
                OcrBox(
                    int(np.floor(min(xs))),
                    int(np.floor(min(ys))),
                    int(np.ceil(max(xs))) + 1,
                    int(np.ceil(max(ys))) + 1,
                    str(text),
                    float(score),
                )
            )
        return boxes


@dataclass
class PixelReport:
    """What happened to one file's pixels (boxes are coordinates only, no text)."""

    changed: bool = False
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    actions: Counter[str] = field(default_factory=Counter)
    findings: Counter[str] = field(default_factory=Counter)


def _to_uint8(img: np.ndarray, photometric: str) -> np.ndarray:
    """A display-like 8-bit RGB rendering for OCR (robust window, MONOCHROME1 inverted)."""
    a = img.astype(np.float32)
    if a.ndim == 2:
        lo, hi = np.percentile(a, [0.5, 99.8])
        if hi <= lo:
            hi = lo + 1
        a = np.clip((a - lo) / (hi - lo) * 255.0, 0, 255)
        if photometric == "MONOCHROME1":
            a = 255 - a
        g = a.astype(np.uint8)
        return np.stack([g, g, g], axis=-1)
    if a.max() > 255:
        a = a / a.max() * 255.0
    return a.astype(np.uint8)


_SUSPICIOUS = re.compile(r"\d{4,}|[\u4e00-\u9fff]{2,}|[A-Za-z]{3,}")


def _border_bands(rgb: np.ndarray) -> np.ndarray:
    """Grey levels of the outer 15% on every side, where burned-in annotations live."""
    g = rgb.mean(axis=-1) if rgb.ndim == 3 else rgb
    r, c = g.shape
    br, bc = max(1, int(r * 0.15)), max(1, int(c * 0.15))
    return np.concatenate(
        [g[:br].ravel(), g[-br:].ravel(), g[:, :bc].ravel(), g[:, -bc:].ravel()]
    ).astype(np.int16)


def _bands_changed(a: np.ndarray, b: np.ndarray) -> bool:
    """True when more than 0.2% of border pixels changed by a text-like contrast (>48)."""
    return bool((np.abs(a - b) > 48).mean() > 0.002)


def needs_ocr(ds: Dataset, settings: OcrSettings) -> bool:
    """OCR when the header says there is burned-in text, the modality usually has it, or the
    image is a colour secondary capture / screenshot."""
    image_type = ds.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = image_type.split("\\")  # a single value, not its characters
    return needs_ocr_values(
        "PixelData" in ds,
        str(ds.get("BurnedInAnnotation", "")),
        str(ds.get("Modality", "")),
        [str(v) for v in image_type],
        int(ds.get("SamplesPerPixel", 1)),
        settings,
    )


def needs_ocr_values(
    has_pixels: bool,
    burned_in: str,
    modality: str,
    image_type: list[str],
    samples_per_pixel: int,
    settings: OcrSettings,
) -> bool:
    """:func:`needs_ocr` on header values already read (the byte-level DICOM path)."""
    if not has_pixels or not settings.enabled:
        return False
    if burned_in.strip().upper() == "YES":
        return True
    if modality.strip().upper() in settings.modalities:
        return True
    return samples_per_pixel == 3 and any(
        v.strip().upper() in ("SECONDARY", "SCREEN", "SCREENSHOT") for v in image_type
    )


class PixelCleaner:
    """Finds and masks burned-in text; one instance serves many files (the OCR model loads once)."""

    def __init__(self, ocr: OcrEngine, settings: OcrSettings | None = None) -> None:
        self.ocr = ocr
        self.settings = settings or OcrSettings()
        self.text = TextDeidentifier()

    # -- decisions -----------------------------------------------------------------------
    def needs_ocr(self, ds: Dataset) -> bool:
        """See :func:`needs_ocr`."""
        return needs_ocr(ds, self.settings)

    def _keep_box(self, b: OcrBox, rows: int, cols: int, ctx: PatientContext | None) -> bool:
        s = self.settings
        if b.score < s.min_score or not b.text.strip():
            return False
        looks_phi = bool(self.text.deidentify(b.text, ctx).findings) or bool(
            _SUSPICIOUS.search(b.text)
        )
        # Small images: a text line may exceed the fraction; 48 px is taller than banner text.
        tall = (b.y1 - b.y0) > max(s.max_box_height_fraction * rows, 48)
        ex, ey = s.edge_fraction * cols, s.edge_fraction * rows
        central = b.x0 > ex and b.x1 < cols - ex and b.y0 > ey and b.y1 < rows - ey
        if tall or central:
            # Anatomy read as text (a rib as "8"): only keep it if the text itself is PHI-like.
            return looks_phi and not tall
        return True

    # -- finding text ----------------------------------------------------------------------
    def _ocr_region(self, rgb: np.ndarray, x0: int, y0: int) -> list[OcrBox]:
        if rgb.shape[0] < 8 or rgb.shape[1] < 8:
            return []
        return [
            OcrBox(b.x0 + x0, b.y0 + y0, b.x1 + x0, b.y1 + y0, b.text, b.score)
            for b in self.ocr.detect(rgb)
        ]

    def find_boxes(
        self, rgb: np.ndarray, ctx: PatientContext | None = None
    ) -> tuple[list[OcrBox], Counter[str]]:
        """Text boxes to mask in one RGB frame (screened first when the frame is large)."""
        rows, cols = rgb.shape[:2]
        actions: Counter[str] = Counter()
        s = self.settings
        if max(rows, cols) < s.upscale_below:
            # Small frames (ultrasound, screenshots) carry 8-10 px text the detector misses at
            # native size; read a 2x copy and map the boxes back.
            actions["ocr_full_upscaled"] += 1
            big = np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)
            found = [
                OcrBox(b.x0 // 2, b.y0 // 2, (b.x1 + 1) // 2, (b.y1 + 1) // 2, b.text, b.score)
                for b in self._ocr_region(big, 0, 0)
            ]
        elif rows * cols <= s.screen_above_pixels:
            actions["ocr_full"] += 1
            found = self._ocr_region(rgb, 0, 0)
        else:
            actions["ocr_screened"] += 1
            f = int(np.ceil(max(rows, cols) / s.screen_max_side))
            small = rgb[: rows - rows % f, : cols - cols % f]
            small = small.reshape(small.shape[0] // f, f, small.shape[1] // f, f, 3).mean(
                axis=(1, 3)
            )
            found = []
            regions: list[tuple[int, int, int, int]] = []
            for b in self._ocr_region(small.astype(np.uint8), 0, 0):
                m = 4 * f
                regions.append(
                    (
                        max(0, b.x0 * f - m),
                        max(0, b.y0 * f - m),
                        min(cols, b.x1 * f + m),
                        min(rows, b.y1 * f + m),
                    )
                )
            band = max(16, int(rows * s.banner_fraction))
            tile = max(s.screen_max_side, 256)
            for y0 in (0, rows - band):
                for x0 in range(0, cols, tile):
                    regions.append((x0, y0, min(cols, x0 + tile), y0 + band))
            for x0, y0, x1, y1 in regions:
                actions["ocr_region"] += 1
                found.extend(self._ocr_region(rgb[y0:y1, x0:x1], x0, y0))
        keep = [b for b in found if self._keep_box(b, rows, cols, ctx)]
        actions["ocr_boxes_dropped"] += len(found) - len(keep)
        return keep, actions

    @staticmethod
    def _render(ds: Dataset, frame: np.ndarray, photometric: str, compressed: bool) -> np.ndarray:
        """8-bit RGB as a viewer would show it (palette applied, YBR converted)."""
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            lut = apply_color_lut(frame, ds).astype(np.float32)
            return (lut / max(float(lut.max()), 1.0) * 255.0).astype(np.uint8)
        if photometric.startswith("YBR") and not compressed:
            from pydicom.pixels import convert_color_space

            return _to_uint8(convert_color_space(frame, photometric, "RGB"), "RGB")
        return _to_uint8(frame, photometric)

    # -- masking ---------------------------------------------------------------------------
    def clean_dataset(self, ds: Dataset, *, context: PatientContext | None = None) -> PixelReport:
        """Mask burned-in text in ``ds`` in place; report boxes and actions."""
        rep = PixelReport()
        if not self.needs_ocr(ds):
            rep.actions["ocr_not_needed"] += 1
            return rep
        ts = (
            ds.file_meta.TransferSyntaxUID
            if "TransferSyntaxUID" in getattr(ds, "file_meta", {})
            else None
        )
        compressed = bool(ts is not None and ts.is_compressed)
        if int(ds.get("BitsAllocated", 8)) == 1:
            raise UnsupportedInputError("1-bit pixel data", reason="pixels_unsupported")
        try:
            decoded = ds.pixel_array
        except Exception as exc:
            raise UnsupportedInputError(type(exc).__name__, reason="pixel_decode_failed") from None
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        spp = int(ds.get("SamplesPerPixel", 1))
        rows, cols = int(ds.Rows), int(ds.Columns)
        dec = decoded.reshape((frames, rows, cols, spp) if spp > 1 else (frames, rows, cols))
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        boxes: list[OcrBox] = []
        last_bands: np.ndarray | None = None
        read = 0
        for fi in range(frames):
            rgb = self._render(ds, dec[fi], photometric, compressed)
            # Cine loops: the anatomy moves every frame but annotations rarely do. A frame is
            # read again only when its border bands (where devices print) changed.
            bands = _border_bands(rgb)
            if last_bands is not None and not _bands_changed(last_bands, bands):
                continue
            if read >= self.settings.max_frames_read:
                raise UnsupportedInputError(
                    f"annotations change in more than {read} frames", reason="ocr_too_many_frames"
                )
            last_bands = bands
            read += 1
            found, acts = self.find_boxes(rgb, context)
            rep.actions.update(acts)
            boxes.extend(found)
        rep.actions["ocr_frames_read"] += read
        if not boxes:
            rep.actions["ocr_clean"] += 1
            return rep
        pad = self.settings.pad_px
        rects = sorted(
            {
                (
                    max(0, b.x0 - pad),
                    max(0, b.y0 - pad),
                    min(cols, b.x1 + pad),
                    min(rows, b.y1 + pad),
                )
                for b in boxes
            }
        )
        for b in boxes:
            for f in self.text.deidentify(b.text).findings:
                rep.findings[f"PIXEL_{f.type}"] += 1
        rep.findings["PIXEL_TEXT_BOX"] += len(rects)
        if compressed:
            self._mask_compressed(ds, dec, rects, photometric, spp, frames)
        else:
            self._mask_native(ds, rects, photometric, spp, frames, rows, cols)
        rep.changed = True
        rep.boxes = rects
        rep.actions["pixel_boxes_masked"] += len(rects)
        return rep

    def _mask_native(
        self,
        ds: Dataset,
        rects: list[tuple[int, int, int, int]],
        photometric: str,
        spp: int,
        frames: int,
        rows: int,
        cols: int,
    ) -> None:
        bits = int(ds.BitsAllocated)
        dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32}.get(bits)
        if dtype is None:
            raise UnsupportedInputError(f"{bits}-bit pixels", reason="pixels_unsupported")
        raw = bytearray(ds.PixelData)
        n = frames * rows * cols * spp
        ts = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
        order = ">" if ts == ExplicitVRBigEndian else "<"
        arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder(order), count=n)  # type: ignore[arg-type]
        planar = spp > 1 and int(ds.get("PlanarConfiguration", 0)) == 1
        if planar:
            view: np.ndarray = arr.reshape(frames, spp, rows, cols)
        elif spp > 1:
            view = arr.reshape(frames, rows, cols, spp)
        else:
            view = arr.reshape(frames, rows, cols)
        if photometric.startswith("YBR") and spp == 3:
            fill: Any = np.array([0, 128, 128], dtype=view.dtype)
        elif photometric == "MONOCHROME1":
            fill = (1 << int(ds.get("BitsStored", bits))) - 1
        elif int(ds.get("PixelRepresentation", 0)) == 1:
            fill = 0  # signed data: 0 is mid-grey-ish but never text-coloured at the extremes
        else:
            fill = 0
        for x0, y0, x1, y1 in rects:
            if planar:
                for c in range(spp):
                    view[:, c, y0:y1, x0:x1] = fill[c] if np.ndim(fill) else fill
            else:
                view[:, y0:y1, x0:x1] = fill
        ds.PixelData = bytes(raw)

    def _mask_compressed(
        self,
        ds: Dataset,
        dec: np.ndarray,
        rects: list[tuple[int, int, int, int]],
        photometric: str,
        spp: int,
        frames: int,
    ) -> None:
        arr = np.array(dec, copy=True)
        fill = 0 if spp == 1 else np.zeros(spp, dtype=arr.dtype)
        if photometric == "MONOCHROME1":
            fill = arr.max()
        for x0, y0, x1, y1 in rects:
            arr[:, y0:y1, x0:x1] = fill
        out = arr if frames > 1 else arr[0]
        ts = ds.file_meta.TransferSyntaxUID
        if ts == RLELossless:
            ds.compress(RLELossless, out)
            return
        # Other codecs: write native pixels with the matching transfer syntax. pydicom hands
        # colour JPEG back as RGB, so the photometric interpretation follows.
        if spp == 3:
            ds.PhotometricInterpretation = "RGB"
            ds.PlanarConfiguration = 0
        ds.PixelData = np.ascontiguousarray(out).tobytes()
        ds["PixelData"].VR = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
        ds["PixelData"].is_undefined_length = False
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
