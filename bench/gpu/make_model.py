"""Random-weight GGUF with a real model's shapes and tokenizer, for throughput runs on a device.

  make_model.py extract REAL.gguf OUTDIR   -> OUTDIR/vocab.gguf (all metadata, no tensors)
                                              + OUTDIR/manifest.json
  make_model.py build OUTDIR MODEL.gguf     -> MODEL.gguf: 2-D tensors F16 ~N(0, 0.02),
                                              norms 1, biases 0

Throughput of a decode step depends on shapes and types, not on weight values (vLLM's
--load-format dummy rests on the same fact), so this stands in for a model too big to carry.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np

# gguf-py ships inside llama.cpp's source (vendor/llama.cpp/gguf-py in the llama-cpp-python sdist),
# or `pip install gguf`; point GGUF_PY at the former when no package index is reachable.
if "GGUF_PY" in os.environ:
    sys.path.insert(0, os.environ["GGUF_PY"])
import gguf


def extract(real: str, outdir: str) -> None:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    r = gguf.GGUFReader(real)
    arch = r.fields[gguf.Keys.General.ARCHITECTURE].contents()
    w = gguf.GGUFWriter(str(out / "vocab.gguf"), arch)
    for f in r.fields.values():
        if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
            continue
        vt = f.types[0]
        st = f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), vt, sub_type=st)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    manifest = [{"name": t.name, "ne": [int(x) for x in t.shape]} for t in r.tensors]
    (out / "manifest.json").write_text(json.dumps({"arch": arch, "tensors": manifest}))
    print(f"{len(manifest)} tensors, arch {arch}")


def build(outdir: str, model: str) -> None:
    src = Path(outdir)
    man = json.loads((src / "manifest.json").read_text())
    r = gguf.GGUFReader(str(src / "vocab.gguf"))
    w = gguf.GGUFWriter(model, man["arch"])
    for f in r.fields.values():
        if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
            continue
        if f.name == gguf.Keys.General.FILE_TYPE:
            continue
        vt = f.types[0]
        st = f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), vt, sub_type=st)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    rng = np.random.default_rng(0)
    for t in man["tensors"]:
        shape = tuple(reversed(t["ne"]))
        if len(shape) >= 2:
            data = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)
        elif t["name"].endswith("norm.weight"):
            data = np.ones(shape, dtype=np.float32)
        else:
            data = np.zeros(shape, dtype=np.float32)
        w.add_tensor(t["name"], data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote", model)


if __name__ == "__main__":
    {"extract": extract, "build": build}[sys.argv[1]](*sys.argv[2:])
