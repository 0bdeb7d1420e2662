"""File helpers the bundle-writing scripts share (export.py, to_tfjs.py, to_tflite.py): the sha256 a
manifest files[] entry carries, and manifest.json written the way the agent's tools write it
(2-space JSON, trailing newline), so a re-run that changes nothing leaves the file byte-identical."""
from __future__ import annotations

import hashlib
import json


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(path: str, manifest: dict) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(manifest, f, indent=2)
        f.write('\n')
