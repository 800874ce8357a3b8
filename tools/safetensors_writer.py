"""A minimal safetensors writer for the fixture generators (Debian has no safetensors package):
a little-endian u64 header length, a JSON header, the raw little-endian data."""
import json
import struct

import numpy as np


def save(path, tensors):
    """tensors: name -> numpy array or torch tensor (float32, float64 or int64)."""
    names = sorted(tensors)
    header, offset, blobs = {}, 0, []
    for n in names:
        a = tensors[n]
        if hasattr(a, "detach"):
            a = a.detach().contiguous().numpy()
        a = np.ascontiguousarray(a)
        dtype = {np.float32: "F32", np.float64: "F64", np.int64: "I64"}[a.dtype.type]
        b = a.tobytes()
        header[n] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
