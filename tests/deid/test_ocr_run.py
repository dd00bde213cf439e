"""One run with the real OCR engine: burned-in text in an ultrasound frame is masked and the
result is flagged for the clinicians' review sample."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest

from apps.deid import services
from apps.deid.engine import DeidProfile
from tests.deid.factories import PATIENT_ID, add_file, dicom_bytes, make_batch, make_source

FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
)


def burned_in_ultrasound() -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    font_path = next((p for p in FONTS if Path(p).exists()), None)
    if font_path is None:
        pytest.skip("no CJK font installed (apt: fonts-wqy-zenhei or fonts-noto-cjk)")
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(40, 8, (256, 256)), 0, 255).astype(np.uint8)
    im = Image.fromarray(img)
    draw = ImageDraw.Draw(im)
    draw.text((6, 8), f"张伟 ID:{PATIENT_ID}", fill=235, font=ImageFont.truetype(font_path, 16))
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(modality="US")))
    ds.Rows, ds.Columns = 256, 256
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.asarray(im).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.django_db
def test_a_run_with_real_ocr_masks_burned_in_text_and_flags_it(tmp_path, deid_keys):
    (tmp_path / "raw").mkdir()
    batch = make_batch(make_source(tmp_path / "raw", tmp_path / "out"))
    raw = add_file(batch, "us/IM0001", burned_in_ultrasound(), kind="dicom", modality="US")
    run = services.start_run(batch, profile=DeidProfile(), acting_user=None, enqueue=False)
    services.process_run(run.pk, ocr="auto")
    result = run.results.get(raw_file=raw)
    assert result.status == "ok", result.reason
    assert result.flagged and "ocr_boxes" in result.flag_reasons
    out = pydicom.dcmread(Path(run.output_root) / result.output_relpath)
    assert (out.pixel_array[:30, :200] < 200).all()  # the banner text is gone
