"""Where a float32 forward pass on CUDA parts from the same pass on the CPU, and under which
kernel settings (issue 13: on an H100 the tiny model's mean similarity came out 1.9e-4 away
from the CPU's, where float32 should agree to ~1e-6).

For each model (the tests' tiny BERT, built here, and, with --config-dir, a random-weight copy
of that sentence-transformers folder), one batch of equal-length rows (no padding) goes through
the Hugging Face model on the CPU and on CUDA under several settings:

- ``as found``: torch's defaults;
- ``encoder``: ``encoder.cuda_kernels`` (what ``detect`` uses: no TF32, the "math" attention);
- ``tf32``: TF32 matrix products on;
- ``sdpa:<backend>``: attention by one scaled-dot-product backend (math, efficient, flash,
  cudnn; a backend that refuses float32 is reported so);
- ``eager``: the model's own eager attention.

It prints, per setting, the largest difference from the CPU of the embeddings layer's output,
of each layer's hidden states (relative to their scale) and of the pooled, normalised
sentence embedding; and the mean similarity of the tiny vocabulary (the figure the test
compares) through ``Encoder`` on the CPU and on CUDA.  Writes parity.json under --out.

    python scripts/cuda_parity.py --out $OUT [--config-dir .carry/w1/model]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def _settings(torch, device: str):
    """name -> a context manager factory for one kernel setting."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from stickytoken.encoder import cuda_kernels

    @contextlib.contextmanager
    def tf32(on: bool):
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = on
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before

    out = {"as found": contextlib.nullcontext,
           "encoder": lambda: cuda_kernels(torch.device(device), torch.float32),
           "tf32": lambda: tf32(True)}
    for name in ("MATH", "EFFICIENT_ATTENTION", "FLASH_ATTENTION", "CUDNN_ATTENTION"):
        backend = getattr(SDPBackend, name, None)
        if backend is not None:
            out[f"sdpa:{name.split('_')[0].lower()}"] = (lambda b=backend: sdpa_kernel([b]))
    return out


def _batch(st, texts, n_rows: int = 32):
    """The most common token length among ``texts``' rows, and up to n_rows rows of it."""
    tok = st.tokenizer
    rows = [tok(t, truncation=True, max_length=st.max_seq_length)["input_ids"] for t in texts]
    lengths = np.array([len(r) for r in rows])
    width = int(np.bincount(lengths).argmax())
    picked = [r for r in rows if len(r) == width][:n_rows]
    return np.array(picked, dtype=np.int64)


def _forward(hf, ids, device, torch):
    t = torch.from_numpy(ids).to(device)
    with torch.inference_mode():
        out = hf(input_ids=t, attention_mask=torch.ones_like(t), output_hidden_states=True)
    hidden = [h.float().cpu().numpy() for h in out.hidden_states]
    pooled = hidden[-1].mean(axis=1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    return hidden, pooled


def _compare(ref, got) -> dict:
    (h_ref, p_ref), (h_got, p_got) = ref, got
    rel = [float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)) for a, b in zip(h_ref, h_got)]
    return {"embeddings_rel": rel[0], "layers_rel": rel[1:], "pooled_abs": float(np.abs(p_ref - p_got).max())}


def model_parity(st_path: str, label: str, texts, torch, device: str = "cuda") -> dict:
    from sentence_transformers import SentenceTransformer

    from stickytoken.encoder import Encoder

    cpu = SentenceTransformer(st_path, device="cpu").eval()
    gpu = SentenceTransformer(st_path, device=device).eval()
    ids = _batch(cpu, texts)
    ref = _forward(cpu[0].auto_model, ids, "cpu", torch)
    rec = {"model": label, "rows": int(ids.shape[0]), "width": int(ids.shape[1]),
           "attn_implementation": getattr(gpu[0].auto_model.config, "_attn_implementation", None), "settings": {}}
    for name, make in _settings(torch, device).items():
        try:
            with make():
                rec["settings"][name] = _compare(ref, _forward(gpu[0].auto_model, ids, device, torch))
        except RuntimeError as exc:   # a backend that does not take float32 (or this head size)
            rec["settings"][name] = {"error": str(exc).splitlines()[0].split(". ")[0][:120]}
    hf = gpu[0].auto_model
    impl = hf.config._attn_implementation
    try:
        hf.set_attn_implementation("eager")
        rec["settings"]["eager"] = _compare(ref, _forward(hf, ids, device, torch))
    finally:
        hf.set_attn_implementation(impl)
    vocab = [t for t, _ in sorted(cpu.tokenizer.get_vocab().items(), key=lambda kv: kv[1])][:4096]
    m_cpu = Encoder(cpu, workers=0).mean_similarity(vocab)
    m_gpu = Encoder(gpu, workers=0).mean_similarity(vocab)
    rec["mean_similarity"] = {"entries": len(vocab), "cpu": m_cpu, "device": m_gpu, "difference": m_gpu - m_cpu}
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--config-dir", help="a sentence-transformers folder; its architecture with random weights")
    ap.add_argument("--device", default="cuda", help="the device compared with the CPU (cpu: a check of this "
                    "script, every difference 0)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device (--device cpu checks the script itself)", file=sys.stderr)
        return 2
    from stickytoken.pairs import builtin_sentences
    from tinymodel import build_tiny_model

    texts = builtin_sentences()[:400]
    work = tempfile.mkdtemp()
    models = []
    build_tiny_model(work)
    models.append((os.path.join(work, "st"), "tiny BERT (tests)"))
    if args.config_dir:
        from profile_gpu import random_model

        models.append((random_model(args.config_dir, os.path.join(work, "random")), "random-weight " +
                       os.path.basename(os.path.normpath(args.config_dir))))
    flags = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
             "torch": torch.__version__,
             "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
             "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
             "float32_matmul_precision": torch.get_float32_matmul_precision()}
    records = [model_parity(path, label, texts, torch, args.device) for path, label in models]
    shutil.rmtree(work, ignore_errors=True)
    with open(os.path.join(args.out, "parity.json"), "w") as fh:
        json.dump({"flags": flags, "models": records}, fh, indent=1)
    print(json.dumps(flags))
    for rec in records:
        ms = rec["mean_similarity"]
        print(f"\n{rec['model']}: {rec['rows']} rows x {rec['width']} tokens, attention {rec['attn_implementation']}; "
              f"mean similarity of {ms['entries']} entries: CPU {ms['cpu']:.7f}, {args.device} {ms['device']:.7f} "
              f"(difference {ms['difference']:.2e})")
        print("| setting | embeddings (rel) | worst layer (rel) | last layer (rel) | pooled (abs) |\n|---|---|---|---|---|")
        for name, r in rec["settings"].items():
            if "error" in r:
                print(f"| {name} | refused: {r['error']} | | | |")
            else:
                print(f"| {name} | {r['embeddings_rel']:.1e} | {max(r['layers_rel']):.1e} | {r['layers_rel'][-1]:.1e} "
                      f"| {r['pooled_abs']:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
