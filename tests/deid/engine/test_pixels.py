"""Burned-in text: masking is exact, compressed syntaxes round-trip, screening, real OCR."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from apps.deid.engine import DeidEngine, DeidProfile, ProjectKey
from apps.deid.engine.pixels import OcrBox, PixelCleaner
from apps.deid.engine.profile import OcrSettings

FONT_CANDIDATES = [
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
]


class FakeOcr:
    """Returns fixed boxes and records what it was asked to read."""

    def __init__(self, boxes: list[OcrBox]) -> None:
        self.boxes = boxes
        self.calls: list[tuple[int, int]] = []

    def detect(self, rgb: np.ndarray) -> list[OcrBox]:
        self.calls.append(rgb.shape[:2])
        return [b for b in self.boxes if b.x1 <= rgb.shape[1] and b.y1 <= rgb.shape[0]]


BANNER = OcrBox(4, 4, 60, 20, "张伟 110105198003071234", 0.98)


def engine(ocr, **ocr_kw) -> DeidEngine:
    # Fake OCR answers in image coordinates, so the 2x read of small frames is switched off.
    ocr_kw.setdefault("upscale_below", 0)
    return DeidEngine(ProjectKey(b"p" * 32), DeidProfile(ocr=OcrSettings(**ocr_kw)), ocr=ocr)


def outside(mask_rects, shape) -> np.ndarray:
    m = np.ones(shape[-2:], dtype=bool)
    for x0, y0, x1, y1 in mask_rects:
        m[y0:y1, x0:x1] = False
    return m


def test_pixels_outside_boxes_stay_bit_identical(make_dataset, dataset_bytes) -> None:
    rng = np.random.default_rng(1)
    # 12 bits stored in 16 allocated, with junk in the high bits: a decode/re-encode round trip
    # would lose them, editing the raw bytes must not.
    px = rng.integers(0, 65535, size=(64, 80), dtype=np.uint16)
    ds = make_dataset(rows=64, cols=80, pixels=px, modality="US")
    res = engine(FakeOcr([BANNER])).process(dataset_bytes(ds))
    assert res.status == "ok", res.reason
    out = pydicom.dcmread(io.BytesIO(res.output))
    got = np.frombuffer(out.PixelData, dtype="<u2").reshape(64, 80)
    keep = outside([(2, 2, 62, 22)], got.shape)
    assert np.array_equal(got[keep], px[keep])
    assert (got[4:20, 4:60] == 0).all()
    assert res.actions["pixel_boxes_masked"] == 1
    assert res.findings["PIXEL_RESIDENT_ID"] == 1
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in {i.CodeValue for i in out.DeidentificationMethodCodeSequence}


def test_multiframe_and_planar_rgb_are_masked_in_every_frame(make_dataset, dataset_bytes):
    rng = np.random.default_rng(2)
    frames = rng.integers(1, 255, size=(3, 3, 40, 50), dtype=np.uint8)  # f, c, r, col (planar)
    ds = make_dataset(rows=40, cols=50, modality="US")
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 1
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    res = engine(FakeOcr([OcrBox(2, 2, 30, 10, "ZY20240305", 0.9)])).process(dataset_bytes(ds))
    assert res.status == "ok", res.reason
    got = np.frombuffer(pydicom.dcmread(io.BytesIO(res.output)).PixelData, np.uint8)
    got = got.reshape(3, 3, 40, 50)
    keep = outside([(0, 0, 32, 12)], (40, 50))
    assert np.array_equal(got[:, :, keep], frames[:, :, keep])
    assert (got[:, :, 2:10, 2:30] == 0).all()


def test_modalities_without_burned_in_text_are_not_touched(make_dataset, dataset_bytes) -> None:
    ds = make_dataset(modality="CT")
    ocr = FakeOcr([BANNER])
    res = engine(ocr).process(dataset_bytes(ds))
    assert ocr.calls == [] and res.actions["ocr_not_needed"] == 1
    assert pydicom.dcmread(io.BytesIO(res.output)).PixelData == ds.PixelData


def test_burned_in_annotation_yes_forces_ocr(make_dataset, dataset_bytes) -> None:
    ds = make_dataset(modality="CT", rows=64, cols=80, BurnedInAnnotation="YES")
    ocr = FakeOcr([BANNER])
    res = engine(ocr).process(dataset_bytes(ds))
    assert ocr.calls and res.actions["pixel_boxes_masked"] == 1


def test_rle_lossless_is_decoded_masked_and_reencoded(make_dataset, dataset_bytes) -> None:
    rng = np.random.default_rng(3)
    px = rng.integers(0, 4095, size=(64, 80), dtype=np.uint16)
    ds = make_dataset(rows=64, cols=80, pixels=px, modality="US")
    ds.compress(RLELossless, px)
    res = engine(FakeOcr([BANNER])).process(dataset_bytes(ds))
    assert res.status == "ok", res.reason
    out = pydicom.dcmread(io.BytesIO(res.output))
    assert out.file_meta.TransferSyntaxUID == RLELossless
    got = out.pixel_array
    keep = outside([(2, 2, 62, 22)], got.shape)
    assert np.array_equal(got[keep], px[keep]) and (got[4:20, 4:60] == 0).all()


def test_jpeg_is_decoded_masked_and_written_native(make_dataset, dataset_bytes) -> None:
    from PIL import Image

    px = np.tile(np.linspace(20, 200, 80, dtype=np.uint8), (64, 1))
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="JPEG", quality=95)
    ds = make_dataset(rows=64, cols=80, modality="US")
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    res = engine(FakeOcr([BANNER])).process(dataset_bytes(ds))
    assert res.status == "ok", res.reason
    out = pydicom.dcmread(io.BytesIO(res.output))
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert out.LossyImageCompression == "01"
    got = out.pixel_array
    assert (got[4:20, 4:60] == 0).all() and got[40, 70] > 100


def test_large_images_are_screened_then_read_at_full_resolution() -> None:
    ocr = FakeOcr([OcrBox(10, 10, 60, 20, "ZY20240305", 0.9)])
    cleaner = PixelCleaner(ocr, OcrSettings(screen_above_pixels=256 * 256, screen_max_side=128))
    img = np.zeros((512, 1024, 3), dtype=np.uint8)
    boxes, actions = cleaner.find_boxes(img)
    assert ocr.calls[0] == (64, 128)  # the downsampled screen
    assert actions["ocr_screened"] == 1 and actions["ocr_region"] >= 3
    assert all(c[0] * c[1] < 512 * 1024 for c in ocr.calls)
    assert any(b.x0 >= 10 and b.y0 >= 10 for b in boxes)


@pytest.mark.parametrize(
    ("box", "kept"),
    [
        (OcrBox(200, 200, 230, 215, "8", 0.97), False),  # lung read as "8", central
        (OcrBox(2, 2, 40, 300, "III", 0.9), False),  # very tall
        (OcrBox(200, 200, 260, 215, "张伟", 0.95), True),  # central but a name
        (OcrBox(2, 2, 60, 15, "W:400 L:40", 0.95), True),  # banner text is masked
        (OcrBox(2, 2, 60, 15, "ZY2024", 0.2), False),  # low score
    ],
)
def test_anatomy_false_positives_are_dropped(box: OcrBox, kept: bool) -> None:
    cleaner = PixelCleaner(FakeOcr([box]), OcrSettings(upscale_below=0))
    boxes, _ = cleaner.find_boxes(np.zeros((512, 512, 3), np.uint8))
    assert bool(boxes) is kept


def test_small_frames_are_read_at_twice_the_size() -> None:
    ocr = FakeOcr([OcrBox(20, 20, 41, 31, "ZY20240305", 0.9)])
    boxes, actions = PixelCleaner(ocr).find_boxes(np.zeros((240, 320, 3), np.uint8))
    assert ocr.calls == [(480, 640)] and actions["ocr_full_upscaled"] == 1
    assert [(b.x0, b.y0, b.x1, b.y1) for b in boxes] == [(10, 10, 21, 16)]


def test_cine_frames_are_reread_only_when_their_borders_change(make_dataset, dataset_bytes):
    frames = np.zeros((6, 64, 80), dtype=np.uint16)
    frames[:, 20:40, 20:60] = np.arange(6)[:, None, None] * 500  # moving "anatomy" in the middle
    frames[3:, 0:6, 0:30] = 4000  # the annotation changes once, at frame 3
    ds = make_dataset(rows=64, cols=80, modality="US")
    ds.NumberOfFrames = 6
    ds.PixelData = frames.tobytes()
    ocr = FakeOcr([])
    res = engine(ocr).process(dataset_bytes(ds))
    assert res.status == "ok" and len(ocr.calls) == 2


def _font() -> str:
    for p in FONT_CANDIDATES:
        if Path(p).exists():
            return p
    pytest.skip("no CJK font installed (apt: fonts-wqy-zenhei or fonts-noto-cjk)")


@pytest.mark.slow
def test_real_ocr_masks_rendered_chinese_and_english_text(make_dataset, dataset_bytes) -> None:
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(40, 8, (384, 384)), 0, 255)
    yy, xx = np.mgrid[:384, :384]
    img[((yy - 192) ** 2 / 150**2 + (xx - 192) ** 2 / 110**2) < 1] += 80
    im = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(im)
    font = ImageFont.truetype(_font(), 16)
    draw.text((6, 8), "张伟 ID:110105198003071234", fill=235, font=font)
    draw.text((6, 30), "John Smith MRN 448812", fill=235, font=font)
    draw.text((230, 360), "2023-05-14 10:32", fill=235, font=font)
    px = np.asarray(im).astype(np.uint16)
    ds = make_dataset(rows=384, cols=384, pixels=px, modality="US")
    res = DeidEngine(ProjectKey(b"p" * 32)).process(dataset_bytes(ds))
    assert res.status == "ok", res.reason
    got = pydicom.dcmread(io.BytesIO(res.output)).pixel_array
    text_pixels = (px >= 200) & ((yy < 50) | (yy > 355))
    assert text_pixels.sum() > 100
    assert (got[text_pixels] == 0).all()  # every bright text pixel is inside a masked box
    changed = got != px
    assert changed.sum() < 0.15 * px.size  # and the anatomy is left alone
    assert res.actions["pixel_boxes_masked"] >= 3
