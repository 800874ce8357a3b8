"""A minimal safetensors writer for the fixture generators (Debian has no safetensors package):
a little-endian u64 header length, a JSON header, the raw little-endian data."""
import json
import struct

import numpy as np


def save(path, tensors):
    """tensors: name -> numpy array or torch tensor (float16/32/64, int8/16/32/64, uint8, bool).
    torch bfloat16 is written as BF16 (numpy has no bfloat16: its raw 16-bit patterns are kept)."""
    names = sorted(tensors)
    header, offset, blobs = {}, 0, []
    for n in names:
        a = tensors[n]
        dtype = None
        if hasattr(a, "detach"):
            a = a.detach().cpu().contiguous()
            if str(a.dtype) == "torch.bfloat16":
                import torch  # only reached with torch tensors
                a, dtype = a.view(torch.int16).numpy(), "BF16"
            else:
                a = a.numpy()
        a = np.ascontiguousarray(a)
        dtype = dtype or {np.float16: "F16", np.float32: "F32", np.float64: "F64", np.int8: "I8", np.int16: "I16",
                          np.int32: "I32", np.int64: "I64", np.uint8: "U8", np.bool_: "BOOL"}[a.dtype.type]
        b = a.tobytes()
        header[n] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
