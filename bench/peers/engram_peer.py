#!/usr/bin/python3
"""Peer implementations of the Engram layer, written from docs/spec (shared/spec/engram-reference.md).

  * NumPy hashing (spec sections 2-4): canonical ids, pad shift, multiply-XOR in wrapping int64,
    floor modulo per head prime; multipliers from numpy.random.default_rng; distinct-prime search.
  * PyTorch layer (spec sections 5-7): lookup with offsets, value/key projections, RMSNorm gate with
    the reference signed square root, per-branch RMSNorm + depthwise causal dilated conv, Y = u + SiLU(y).

Commands:
  check [--data DIR]                 reproduce the golden hash ids and forward output (exit 1 if not)
  bench [--json FILE] [--threads 1,2] [--tokens N] [--reps R]   time the peers
  compare PEER_JSON ENGRAM_JSON      print ratios C++ vs peers
Safetensors files are parsed here (struct + json + numpy.frombuffer); no `safetensors` package.
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np

_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
           "F16": np.float16, "U8": np.uint8, "I8": np.int8}


def read_safetensors(path):
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        dt = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        arr = np.frombuffer(buf, dtype=dt, count=(b - a) // dt.itemsize, offset=base + a)
        tensors[name] = arr.reshape(info["shape"]).astype(dt.newbyteorder("="), copy=True)
    return meta, tensors


# ---------------------------------------------------------------- hashing (NumPy)

def _is_prime(n):
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


def layer_primes(cfg):
    """Spec section 3: {layer_id: int64 [N-1, K]}; one prime search shared by all listed layers."""
    N, K = cfg["max_ngram"], cfg["heads_per_ngram"]
    taken, out = set(), {}
    for L in cfg["layer_ids"]:
        rows = []
        for n in range(2, N + 1):
            start = cfg["table_size_per_ngram"][n - 2] - 1
            row = []
            for _ in range(K):
                p = start + 1
                while p in taken or not _is_prime(p):
                    p += 1
                taken.add(p)
                row.append(p)
                start = p
            rows.append(row)
        out[L] = np.array(rows, dtype=np.int64)
    return out


def layer_multipliers(cfg, canonical_vocab):
    """Spec section 2: {layer_id: int64 [N]} odd multipliers."""
    N = cfg["max_ngram"]
    half_bound = max(1, ((2 ** 63 - 1) // canonical_vocab) // 2)
    out = {}
    for L in cfg["layer_ids"]:
        rng = np.random.default_rng(cfg["seed"] + 10007 * L)
        r = rng.integers(0, half_bound, size=N, dtype=np.int64)
        out[L] = r * 2 + 1
    return out


def ngram_hash(canon, mults, primes, canon_pad):
    """canon: int64 [B, T] canonical ids -> int64 [B, T, (N-1)*K] per-head row ids (spec section 4)."""
    canon = np.asarray(canon, dtype=np.int64)
    B, T = canon.shape
    N = len(mults)
    with np.errstate(over="ignore"):
        mix = canon * mults[0]
        outs = []
        for k in range(1, N):
            shifted = np.empty_like(canon)
            shifted[:, :k] = canon_pad
            shifted[:, k:] = canon[:, :T - k]
            mix = mix ^ (shifted * mults[k])                 # wrapping int64
            # order n = k + 1: floor modulo (numpy % on int64 takes the divisor's sign)
            outs.append(mix[:, :, None] % primes[k - 1][None, None, :])
    return np.concatenate(outs, axis=2)


def canonical_vocab_size(lookup):
    return int(lookup.max()) + 1


def canonical(lookup, raw):
    raw = np.asarray(raw, dtype=np.int64)
    return np.where(raw >= 0, lookup[np.clip(raw, 0, None)], raw)


# ---------------------------------------------------------------- layer (PyTorch)

def make_layer_cls():
    import torch
    import torch.nn.functional as F

    F32_EPS = float(np.finfo(np.float32).eps)

    class EngramLayer(torch.nn.Module):
        """One Engram layer (spec 5-7). Key projections of all branches and the value projection
        are fused into one [(M+1)H, Din] matmul; the conv is a grouped Conv1d with dilation N."""

        def __init__(self, w, N, M, Kc, gate_eps=F32_EPS, conv_eps=1e-5):
            super().__init__()
            t = lambda a: a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
            self.table = t(w["multi_head_embedding.embedding.weight"])
            self.offsets = t(w["multi_head_embedding.offsets"]).long()
            self.M, self.N, self.Kc = M, N, Kc
            self.H = w["value_proj.weight"].shape[0]
            self.W = torch.cat([t(w["value_proj.weight"])] + [t(w[f"key_projs.{m}.weight"]) for m in range(M)], 0)
            self.b = torch.cat([t(w["value_proj.bias"])] + [t(w[f"key_projs.{m}.bias"]) for m in range(M)], 0)
            self.w1 = torch.stack([t(w[f"norm1.{m}.weight"]) for m in range(M)])  # [M, H]
            self.w2 = torch.stack([t(w[f"norm2.{m}.weight"]) for m in range(M)])
            self.cw = torch.stack([t(w[f"short_conv.norms.{m}.weight"]) for m in range(M)])
            self.conv_w = t(w["short_conv.conv.weight"])                             # [M*H, 1, Kc]
            self.conv_taps = self.conv_w[:, 0, :].t().contiguous()                   # [Kc, M*H]
            self.gate_eps, self.conv_eps = gate_eps, conv_eps
            self.bf16 = False

        def set_bf16(self, on=True):
            """Projections in bf16 (PyTorch's bf16 `linear`: oneDNN on the CPU): W, b and the memory
            vectors rounded to bf16, the product returned as float."""
            self.bf16 = on
            self.Wb, self.bb = self.W.bfloat16(), self.b.bfloat16()

        @staticmethod
        def rms(x, w, eps):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

        def gated_value(self, hash_ids, hidden):
            """hash_ids [B,T,heads] long, hidden [B,T,M,H] -> u [B,T,M,H] and its conv input [B,T,M,H]."""
            B, T = hash_ids.shape[:2]
            e = F.embedding(hash_ids + self.offsets, self.table).reshape(B, T, -1)
            if self.bf16:
                kv = F.linear(e.bfloat16(), self.Wb, self.bb).float().view(B, T, self.M + 1, self.H)
            elif B * T == 1:   # decode: OpenBLAS sgemm with one row is ~5x slower than sgemv here
                kv = torch.addmv(self.b, self.W, e.view(-1)).view(B, T, self.M + 1, self.H)
            else:
                kv = F.linear(e, self.W, self.b).view(B, T, self.M + 1, self.H)
            v, k = kv[:, :, 0], kv[:, :, 1:]
            s = (self.rms(k, self.w1, self.gate_eps) * self.rms(hidden, self.w2, self.gate_eps)).sum(-1)
            s = s / math.sqrt(self.H)
            alpha = torch.sigmoid(torch.sign(s) * torch.sqrt(torch.clamp(s.abs(), min=1e-6)))  # [B,T,M]
            u = alpha.unsqueeze(-1) * v.unsqueeze(2)
            return u, self.rms(u, self.cw, self.conv_eps)

        def forward(self, hash_ids, hidden):
            B, T = hash_ids.shape[:2]
            u, x = self.gated_value(hash_ids, hidden)
            MH = self.M * self.H
            x = x.reshape(B, T, MH).transpose(1, 2)
            x = F.pad(x, ((self.Kc - 1) * self.N, 0))
            y = F.conv1d(x, self.conv_w, groups=MH, dilation=self.N)
            y = y.transpose(1, 2).reshape(B, T, self.M, self.H)
            return u + F.silu(y)

        def init_state(self, B):
            return torch.zeros(B, (self.Kc - 1) * self.N, self.M * self.H)

        def step(self, hash_ids, hidden, state):
            """One decode token: hash_ids [B,1,heads], hidden [B,1,M,H], state [B,(Kc-1)N,M*H]
            (the last (Kc-1)*N conv inputs). Returns Y [B,1,M,H] and the new state."""
            B = hash_ids.shape[0]
            u, x = self.gated_value(hash_ids, hidden)
            buf = torch.cat([state, x.reshape(B, 1, -1)], 1)      # [B,(Kc-1)N+1,MH]
            y = (buf[:, ::self.N] * self.conv_taps).sum(1)        # taps t-(Kc-1)N .. t
            y = y.view(B, 1, self.M, self.H)
            return u + F.silu(y), buf[:, 1:]

    return EngramLayer


def F_embed(layer, hash_ids):
    """The memory vectors [B*T, D] of hash ids [B, T, heads] (the projections' input)."""
    import torch.nn.functional as F
    B, T = hash_ids.shape[:2]
    return F.embedding(hash_ids + layer.offsets, layer.table).reshape(B * T, -1).contiguous()


# ---------------------------------------------------------------- check

def cmd_check(args):
    import torch
    ok = True
    meta, t = read_safetensors(os.path.join(args.data, "hash_reference_default.safetensors"))
    cfg = json.loads(meta["config"])
    lookup = t["lookup"]
    vp = canonical_vocab_size(lookup)
    pad = int(lookup[cfg["pad_id"]])
    print(f"hash case: V'={vp} (file {cfg['canonical_vocab_size']}), canonical pad={pad} (file {cfg['canonical_pad_id']})")
    ok &= vp == cfg["canonical_vocab_size"] and pad == cfg["canonical_pad_id"]
    primes, mults = layer_primes(cfg), layer_multipliers(cfg, vp)
    canon = canonical(lookup, t["input_ids"])
    for L in cfg["layer_ids"]:
        got = ngram_hash(canon, mults[L], primes[L], pad)
        ref = t[f"hash_ids.layer{L}"]
        nbad = int((got != ref).sum())
        mm = bool((mults[L] == t[f"multipliers.layer{L}"]).all())
        pp = bool((primes[L] == t[f"primes.layer{L}"]).all())
        print(f"  layer {L}: multipliers {'ok' if mm else 'DIFFER'}, primes {'ok' if pp else 'DIFFER'}, "
              f"hash_ids mismatches {nbad} / {ref.size}")
        ok &= mm and pp and nbad == 0

    meta, t = read_safetensors(os.path.join(args.data, "forward_small.safetensors"))
    cfg = json.loads(meta["config"])
    L = cfg["layer_id"]
    lookup = t["lookup"]
    vp, pad = canonical_vocab_size(lookup), int(lookup[cfg["pad_id"]])
    hid = ngram_hash(canonical(lookup, t["input_ids"]), layer_multipliers(cfg, vp)[L], layer_primes(cfg)[L], pad)
    nbad = int((hid != t["hash_ids"]).sum())
    print(f"forward case: hash_ids from input_ids mismatches {nbad} / {hid.size}")
    ok &= nbad == 0
    offs = np.concatenate([[0], np.cumsum(layer_primes(cfg)[L].reshape(-1))[:-1]])
    ok_off = bool((offs == t["multi_head_embedding.offsets"]).all())
    print(f"  offsets {'ok' if ok_off else 'DIFFER'}")
    ok &= ok_off
    Layer = make_layer_cls()
    layer = Layer(t, cfg["max_ngram"], cfg["branches"], cfg["kernel_size"],
                  gate_eps=cfg["gate_norm_eps"], conv_eps=cfg["conv_norm_eps"])
    assert cfg["conv_dilation"] == cfg["max_ngram"]
    ref = t["output"]
    hs, h = torch.from_numpy(t["hidden_states"]), torch.from_numpy(t["hash_ids"])
    with torch.inference_mode():
        out = layer(h, hs).numpy()
        err = float(np.abs(out - ref).max() / np.abs(ref).max())
        print(f"  forward output: max|diff|/max|ref| = {err:.3e} (limit 1e-5)")
        ok &= err <= 1e-5
        state = layer.init_state(h.shape[0])
        steps = []
        for i in range(h.shape[1]):
            y, state = layer.step(h[:, i:i + 1], hs[:, i:i + 1], state)
            steps.append(y)
        err_d = float(np.abs(torch.cat(steps, 1).numpy() - ref).max() / np.abs(ref).max())
        print(f"  decode steps (cached conv state) vs output: {err_d:.3e} (limit 1e-5)")
        ok &= err_d <= 1e-5
        state, steps = layer.init_state(1), []          # B = 1: the single-token (sgemv) path
        for i in range(h.shape[1]):
            y, state = layer.step(h[:1, i:i + 1], hs[:1, i:i + 1], state)
            steps.append(y)
        err_1 = float(np.abs(torch.cat(steps, 1).numpy() - ref[:1]).max() / np.abs(ref[:1]).max())
        print(f"  decode steps, batch 1 alone: {err_1:.3e} (limit 1e-5)")
        ok &= err_1 <= 1e-5
    print("check:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


# ---------------------------------------------------------------- bench

DEFAULT_CFG = {"table_size_per_ngram": [646400, 646400], "max_ngram": 3, "heads_per_ngram": 8,
               "embed_per_ngram": 512, "layer_ids": [1, 15], "pad_id": 2, "seed": 0}
DEFAULT_VP = 98627


def zipf_tokens(n, vocab=DEFAULT_VP, s=1.1, seed=1):
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(np.arange(1, vocab + 1, dtype=np.float64) ** -s)
    perm = rng.permutation(vocab).astype(np.int64)
    r = np.searchsorted(cdf, rng.uniform(0, cdf[-1], size=n))
    return perm[np.minimum(r, vocab - 1)]


def best_of(fn, reps, warmup=1):
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def blas_info():
    """Which BLAS library / OpenBLAS kernel the process has loaded."""
    info = {}
    try:
        import threadpoolctl
        info["threadpoolctl"] = threadpoolctl.threadpool_info()
    except Exception:
        pass
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            p = line.split()[-1]
            if "blas" in p or "lapack" in p or "mkl" in p or "omp" in os.path.basename(p):
                libs.add(os.path.realpath(p))
    info["loaded_libs"] = sorted(libs)
    import ctypes
    for p in sorted(libs):
        if "openblas" in p:
            try:
                lib = ctypes.CDLL(p)
                lib.openblas_get_config.restype = ctypes.c_char_p
                lib.openblas_get_corename.restype = ctypes.c_char_p
                info["openblas_config"] = lib.openblas_get_config().decode()
                info["openblas_corename"] = lib.openblas_get_corename().decode()
                break
            except Exception:
                pass
    info["env"] = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                  "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    return info


def cmd_bench(args):
    import torch
    res = {"numpy": np.__version__, "torch": torch.__version__, "cpu_count": os.cpu_count(),
           "loadavg_at_start": os.getloadavg()}
    cfg = DEFAULT_CFG
    primes, mults = layer_primes(cfg), layer_multipliers(cfg, DEFAULT_VP)
    L = cfg["layer_ids"][0]
    # --- NumPy hashing: one layer, 16 heads, B = 4 x T = tokens/4 canonical ids
    ntok = args.tokens
    canon = zipf_tokens(ntok).reshape(4, ntok // 4)
    sec = best_of(lambda: ngram_hash(canon, mults[L], primes[L], 2), args.reps)
    res["hash_numpy_mtok_s"] = ntok / sec / 1e6
    res["hash_tokens"] = ntok
    print(f"numpy hashing: {ntok} tokens (4 x {ntok // 4}), 16 heads, best of {args.reps}: "
          f"{sec * 1e3:.2f} ms = {res['hash_numpy_mtok_s']:.2f} Mtok/s", flush=True)

    # --- PyTorch layer at the default sizes
    H, M, Kc, N = 1024, 4, 4, cfg["max_ngram"]
    p = primes[L].reshape(-1)
    rows, d = int(p.sum()), cfg["embed_per_ngram"] // cfg["heads_per_ngram"]
    din = (N - 1) * cfg["embed_per_ngram"]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    torch.set_num_threads(max(args.threads))
    w = {"multi_head_embedding.embedding.weight": torch.empty(rows, d).normal_(),
         "multi_head_embedding.offsets": torch.from_numpy(np.concatenate([[0], np.cumsum(p)[:-1]])),
         "value_proj.weight": torch.randn(H, din) * 0.02, "value_proj.bias": torch.randn(H) * 0.02,
         "short_conv.conv.weight": torch.randn(M * H, 1, Kc) * 0.5}
    for m in range(M):
        w[f"key_projs.{m}.weight"] = torch.randn(H, din) * 0.02
        w[f"key_projs.{m}.bias"] = torch.randn(H) * 0.02
        for nm in ("norm1", "norm2", "short_conv.norms"):
            w[f"{nm}.{m}.weight"] = 1 + 0.1 * torch.randn(H)
    layer = make_layer_cls()(w, N, M, Kc)
    print(f"table {rows} x {d} f32 ({rows * d * 4 / 1e9:.2f} GB) built in {time.perf_counter() - t0:.1f} s", flush=True)
    T = 512
    toks = zipf_tokens(T, seed=2).reshape(1, T)
    hid = torch.from_numpy(ngram_hash(toks, mults[L], primes[L], 2))
    hs = torch.randn(1, T, M, H)
    res["forward"] = {}
    res["decode"] = {}
    res["projections"] = {}
    e512 = F_embed(layer, hid)
    e1 = e512[:1].contiguous()
    with torch.inference_mode():
        for nt in args.threads:
            torch.set_num_threads(nt)
            # The projections alone (the layer's [512, 1024] x [1024, 5120] and one token), f32 and
            # bf16 (oneDNN's bf16 matmul; AMX on CPUs that have it).
            import torch.nn.functional as F
            Wb, bb, e512b, e1b = layer.W.bfloat16(), layer.b.bfloat16(), e512.bfloat16(), e1.bfloat16()
            pr = {"f32_ms_t512": best_of(lambda: F.linear(e512, layer.W, layer.b), args.reps) * 1e3,
                  "bf16_ms_t512": best_of(lambda: F.linear(e512b, Wb, bb), args.reps) * 1e3}
            steps = args.decode_steps

            def many(fn):
                def run():
                    for _ in range(steps):
                        fn()
                return run
            pr["f32_us_t1"] = best_of(many(lambda: torch.addmv(layer.b, layer.W, e1.view(-1))), args.reps) / steps * 1e6
            pr["bf16_us_t1"] = best_of(many(lambda: F.linear(e1b, Wb, bb)), args.reps) / steps * 1e6
            res["projections"][str(nt)] = pr
            print(f"torch threads={nt}: projections alone: T=512 f32 {pr['f32_ms_t512']:.2f} ms, bf16 "
                  f"{pr['bf16_ms_t512']:.2f} ms; one token f32 {pr['f32_us_t1']:.1f} us, bf16 {pr['bf16_us_t1']:.1f} us",
                  flush=True)
            sec = best_of(lambda: layer(hid, hs), args.reps)
            res["forward"][str(nt)] = {"forward_ms_t512": sec * 1e3}
            # decode: one token, cached conv state (embedding gather + projections + gate + norm + conv tap)
            state = layer.init_state(1)
            h1, hs1 = hid[:, :1].contiguous(), hs[:, :1].contiguous()

            def dec():
                for _ in range(args.decode_steps):
                    layer.step(h1, hs1, state)
            dsec = best_of(dec, args.reps) / args.decode_steps
            res["decode"][str(nt)] = {"decode_us": dsec * 1e6}
            print(f"torch threads={nt}: forward B=1 T=512 best of {args.reps}: {sec * 1e3:.2f} ms; "
                  f"decode step (1 token, cached conv state): {dsec * 1e6:.1f} us", flush=True)
            # The same layer with bf16 projections.
            layer.set_bf16(True)
            sec16 = best_of(lambda: layer(hid, hs), args.reps)
            state = layer.init_state(1)
            dsec16 = best_of(dec, args.reps) / args.decode_steps
            layer.set_bf16(False)
            res["forward"][str(nt)]["forward_ms_t512_bf16"] = sec16 * 1e3
            res["decode"][str(nt)]["decode_us_bf16"] = dsec16 * 1e6
            print(f"torch threads={nt}, bf16 projections: forward {sec16 * 1e3:.2f} ms; decode step "
                  f"{dsec16 * 1e6:.1f} us", flush=True)
    res["loadavg_at_end"] = os.getloadavg()
    res["blas"] = blas_info()
    res["torch_config"] = torch.__config__.show()
    print("BLAS loaded:", res["blas"].get("loaded_libs"), "| openblas core:",
          res["blas"].get("openblas_corename"), "|", res["blas"].get("openblas_config"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        print("peer results written to", args.json)
    return 0


def cmd_compare(args):
    with open(args.peer) as f:
        peer = json.load(f)
    try:
        with open(args.engram) as f:
            ours = json.load(f)
    except Exception as e:
        print(f"engram JSON unavailable ({e}); peer numbers only.")
        return 0
    th = str(ours.get("threads", 1))
    fwd = peer["forward"].get(th) or peer["forward"]["1"]
    dec = peer["decode"].get(th) or peer["decode"]["1"]
    used = th if th in peer["forward"] else "1"
    print(f"ratios (engram threads={ours.get('threads')}, PyTorch threads={used}):")

    def line(name, num, den, goal):
        if num is None or den is None or not den:
            print(f"  {name}: n/a (missing key)")
            return None
        r = num / den
        print(f"  {name}: {r:.2f}x (goal >= {goal}x) {'MET' if r >= goal else 'NOT MET'}")
        return r

    def bound(name, bound_v, ours_v, limit):
        # ours / bound for a time: at most `limit` is the goal.
        if bound_v is None or ours_v is None or not bound_v:
            print(f"  {name}: n/a (missing key)")
            return None
        r = ours_v / bound_v
        print(f"  {name}: {r:.2f}x the bound (goal <= {limit}x) {'MET' if r <= limit else 'NOT MET'}")
        return r

    out = {"threads": used}
    out["hash_ours_over_numpy"] = line("hashing ours/NumPy", ours.get("hash_mtok_s"), peer["hash_numpy_mtok_s"], 100)
    out["forward_torch_over_ours"] = line("forward PyTorch/ours", fwd["forward_ms_t512"], ours.get("forward_ms_t512"), 3)
    out["decode_torch_over_ours"] = line("decode PyTorch/ours", dec["decode_us"], ours.get("decode_us"), 2)
    fwd2 = peer["forward"].get("2")
    dec2 = peer["decode"].get("2")
    if fwd2 and ours.get("forward_ms_t512_2t"):
        out["forward_2t_torch_over_ours"] = line("forward, 2 threads each, PyTorch/ours", fwd2["forward_ms_t512"],
                                                 ours.get("forward_ms_t512_2t"), 3)
    if ours.get("decode_us_bf16"):
        out["decode_bf16_torch_over_ours"] = line("decode, our bf16 weights, PyTorch (f32)/ours", dec["decode_us"],
                                                  ours.get("decode_us_bf16"), 2)
    if ours.get("forward_ms_t512_bf16_dot"):
        out["forward_bf16_dot_torch_over_ours"] = line("forward, our bf16 dot products, PyTorch (f32)/ours",
                                                       fwd["forward_ms_t512"], ours.get("forward_ms_t512_bf16_dot"), 3)
    if fwd2 and ours.get("forward_ms_t512_bf16_dot_2t"):
        out["forward_bf16_dot_2t_torch_over_ours"] = line(
            "forward, bf16 dot products, 2 threads each, PyTorch (f32)/ours", fwd2["forward_ms_t512"],
            ours.get("forward_ms_t512_bf16_dot_2t"), 3)
    if ours.get("decode_us_bf16_dot"):
        out["decode_bf16_dot_torch_over_ours"] = line("decode, our bf16 dot products, PyTorch (f32)/ours",
                                                      dec["decode_us"], ours.get("decode_us_bf16_dot"), 2)
    # The strongest CPU peer: PyTorch's bf16 projections alone (oneDNN), 1 thread.
    proj = (peer.get("projections") or {}).get("1")
    if proj and ours.get("forward_ms_t512_best"):
        fmt = ours.get("forward_best_format", "?")
        out["forward_best_over_torch_bf16_gemm"] = bound(
            f"forward, fastest format ({fmt}), ours / PyTorch bf16 projections alone",
            proj["bf16_ms_t512"], ours["forward_ms_t512_best"], 1.5)
    if proj and ours.get("decode_us_best"):
        # The faster of PyTorch's one-token projections (f32 addmv on OpenBLAS, or bf16 linear).
        t1 = min(proj["f32_us_t1"], proj["bf16_us_t1"])
        which = "f32" if proj["f32_us_t1"] <= proj["bf16_us_t1"] else "bf16"
        out["decode_torch_proj_over_best"] = line(
            f"decode, PyTorch's faster one-token projections ({which}, {t1:.0f} us) / our whole step "
            f"({ours.get('decode_best_format', '?')})", t1, ours["decode_us_best"], 2)
    if ours.get("forward_ms_t512_best") and ours.get("gemm_best_ms_t512"):
        out["forward_best_over_own_gemm"] = bound("forward, fastest format, ours / our GEMM alone",
                                                  ours["gemm_best_ms_t512"], ours["forward_ms_t512_best"], 1.3)
    if fwd.get("forward_ms_t512_bf16") and ours.get("forward_ms_t512_best"):
        out["forward_torch_bf16_over_best"] = line("forward, PyTorch bf16 layer / ours (fastest)",
                                                   fwd["forward_ms_t512_bf16"], ours["forward_ms_t512_best"], 1)
    if dec2:
        print(f"  (PyTorch 2 threads: forward {fwd2['forward_ms_t512']:.1f} ms, decode {dec2['decode_us']:.0f} us)")
    out["forward_over_gemm_bound"] = bound("forward ours/GEMM bound", ours.get("forward_bound_ms_t512"),
                                           ours.get("forward_ms_t512"), 1.15)
    if ours.get("gemm_f32_kernel_ms_t512"):
        out["forward_over_own_gemm"] = bound("forward ours/our f32 GEMM kernel alone", ours.get("gemm_f32_kernel_ms_t512"),
                                             ours.get("forward_ms_t512"), 1.15)
    if ours.get("gemm_bf16_dot_kernel_ms_t512"):
        out["forward_bf16_dot_over_own_gemm"] = bound("forward bf16 dot ours/our bf16 dot GEMM alone",
                                                      ours.get("gemm_bf16_dot_kernel_ms_t512"),
                                                      ours.get("forward_ms_t512_bf16_dot"), 1.15)
    out["decode_over_bound"] = bound("decode ours/bandwidth bound", ours.get("decode_bound_us"), ours.get("decode_us"),
                                     1.3)
    if ours.get("decode_bound_us_bf16"):
        out["decode_bf16_over_bound"] = bound("decode bf16 ours/bandwidth bound", ours.get("decode_bound_us_bf16"),
                                              ours.get("decode_us_bf16"), 1.3)
    out["gather_over_probe"] = line("gather f32 ours/probe", ours.get("gather_mtok_s"), ours.get("gather_limit_mtok_s"),
                                    0.9)
    for codec in ("bf16", "f16", "fp8", "int8"):
        out[f"gather_{codec}_over_probe"] = line(f"gather {codec} ours/probe of its row size",
                                                 ours.get(f"gather_{codec}_mtok_s"),
                                                 ours.get(f"gather_{codec}_limit_mtok_s"), 0.9)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peer": peer, "engram": ours, "ratios": out}, f, indent=2)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    here = os.path.dirname(os.path.abspath(__file__))
    c = sub.add_parser("check")
    c.add_argument("--data", default=os.path.join(here, "..", "..", "tests", "data"))
    b = sub.add_parser("bench")
    b.add_argument("--json")
    b.add_argument("--threads", default="1,2", type=lambda s: [int(x) for x in s.split(",")])
    b.add_argument("--tokens", type=int, default=1 << 16)
    b.add_argument("--reps", type=int, default=5)
    b.add_argument("--decode-steps", type=int, default=200)
    r = sub.add_parser("compare")
    r.add_argument("peer")
    r.add_argument("engram")
    r.add_argument("--json")
    args = ap.parse_args()
    return {"check": cmd_check, "bench": cmd_bench, "compare": cmd_compare}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
