"""Make 512x512 16-bit CT DICOM files from real CT pixels, at bench time, into a temp dir.

Source: Debian `invesalius-examples`, /usr/share/doc/invesalius-examples/examples/Cranium.inv3 (a tar
holding matrix.dat: one real head CT, 108 x 256 x 256 int16 HU, 0.957 x 0.957 x 1.5 mm). GPL-2: it is
read from the installed package every run and the files made here are never committed.

Each axial slice is flipped to display orientation (InVesalius stores rows posterior-first), upsampled
2x in-plane with linear interpolation (scipy.ndimage.zoom order=1, HU rounded to int16) to 512 x 512,
and written with pydicom as a CT Image Storage object, Explicit VR Little Endian, uncompressed:
BitsAllocated/Stored 16, HighBit 15, PixelRepresentation 1 (signed), stored value = HU + 1024 with
RescaleSlope 1 / RescaleIntercept -1024 (RescaleType HU), WindowCenter 40 / WindowWidth 400,
PixelSpacing 0.4785 mm (half the source spacing). Patient fields are synthetic.

`--copies K` writes every slice K times with different UIDs (so every file has distinct bytes and the
agent's content-hash dedup does not skip any), giving 108*K files named ct-<copy>-<slice>.dcm.

Usage: /usr/bin/python3 bench/e2e/make_ct.py --out DIR [--copies 4]
Prints one JSON line: {"files": [...], "width": 512, ...}.
"""
from __future__ import annotations

import argparse
import json
import os
import plistlib
import sys
import tarfile
import time

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

SRC = '/usr/share/doc/invesalius-examples/examples/Cranium.inv3'
CT_IMAGE_STORAGE = '1.2.840.10008.5.1.4.1.1.2'


def load_volume() -> tuple[np.ndarray, list[float]]:
    if not os.path.exists(SRC):
        sys.exit(f'{SRC} not found: apt-get install invesalius-examples')
    with tarfile.open(SRC) as t:
        members = {os.path.basename(m.name): m for m in t.getmembers()}
        main = plistlib.loads(t.extractfile(members['main.plist']).read())
        raw = t.extractfile(members[main['matrix']['filename']]).read()
    shape = tuple(main['matrix']['shape'])  # (z, y, x)
    vol = np.frombuffer(raw, dtype=np.int16)
    n = int(np.prod(shape))
    vol = vol[-n:].reshape(shape)  # matrix.dat may carry a leading border; the volume is the tail
    return vol, [float(s) for s in main['spacing']]


def write_slice(path: str, hu512: np.ndarray, z: int, copy: int, spacing: list[float], study: str, series: str,
                frame_of_ref: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    sop = generate_uid()
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid()
    ds = FileDataset(path, {}, file_meta=meta, preamble=b'\0' * 128)
    ds.is_little_endian = True
    ds.is_implicit_VR = False
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = frame_of_ref
    ds.Modality = 'CT'
    ds.PatientName = 'BENCH^SYNTHETIC'
    ds.PatientID = 'BENCH-0001'
    ds.StudyDate = '20260101'
    ds.SeriesNumber = copy + 1
    ds.InstanceNumber = z + 1
    ds.ImageType = ['DERIVED', 'SECONDARY', 'AXIAL']
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, -z * spacing[2]]
    ds.SliceThickness = spacing[2]
    ds.PixelSpacing = [spacing[1] / 2, spacing[0] / 2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = 'MONOCHROME2'
    ds.Rows, ds.Columns = hu512.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.RescaleType = 'HU'
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    stored = (hu512.astype(np.int32) + 1024).clip(-32768, 32767).astype('<i2')
    ds.PixelData = stored.tobytes()
    ds.save_as(path, write_like_original=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', required=True)
    ap.add_argument('--copies', type=int, default=4)
    args = ap.parse_args()
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    vol, spacing = load_volume()
    files = []
    study = generate_uid()
    series_uids = [generate_uid() for _ in range(args.copies)]
    frame_of_ref = generate_uid()
    for z in range(vol.shape[0]):
        sl = np.flipud(vol[z]).astype(np.float32)
        up = np.rint(ndimage.zoom(sl, 2, order=1)).astype(np.int16)
        assert up.shape == (512, 512), up.shape
        for c in range(args.copies):
            path = os.path.join(args.out, f'ct-{c}-{z:03d}.dcm')
            write_slice(path, up, z, c, spacing, study, series_uids[c], frame_of_ref)
            files.append(path)
    # check one file round-trips as a reader sees it
    ds = pydicom.dcmread(files[0])
    assert ds.pixel_array.dtype == np.int16 and ds.pixel_array.shape == (512, 512)
    print(json.dumps({'files': files, 'source': SRC, 'slices': int(vol.shape[0]), 'copies': args.copies,
                      'width': 512, 'height': 512, 'bytesPerFile': os.path.getsize(files[0]),
                      'pydicom': pydicom.__version__, 'seconds': round(time.time() - t0, 2)}))


if __name__ == '__main__':
    main()
