"""Model-only trial of runtimes on the bundle (issue 19): litert_N, tensorflow_N (the product's runtimes),
tfdefault_N (XLA with TensorFlow's default threads: the issue's limit) and OpenVINO as ov:HINT:STREAMS:THREADS:REQUESTS
(on the bundle's model.tflite, f32 precision). `python benchmarks/runtime_trial.py DATA MODEL VARIANTS`; numbers in
benchmarks/README.md."""

import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, "/work/main")
from benchmarks.model_only import model_inputs
from model.bundle import read_bundle

data, model_dir = sys.argv[1], sys.argv[2]
variants = sys.argv[3].split(",")
t0 = time.perf_counter()
bundle = read_bundle(model_dir)
numeric, tokens = model_inputs(data, bundle, 262144)
print("inputs", len(numeric), f"{time.perf_counter() - t0:.1f}s", flush=True)


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(name, fn, ref=None):
    fn(numeric[:8192], tokens[:8192])
    best = None
    for _ in range(3):
        c0, w0 = cpu(), time.perf_counter()
        out = fn(numeric, tokens)
        w, c = time.perf_counter() - w0, cpu() - c0
        if best is None or w < best[0]:
            best = (w, c)
    w, c = best
    diff = float(np.max(np.abs(out - ref))) if ref is not None else 0
    print(
        f"{name:28s} {len(numeric) / w:9.0f} rows/s  {c / len(numeric) * 1e6:5.1f} CPU-us/row  maxdiff {diff:.2e}",
        flush=True,
    )
    return out


B = 4096


def ov_runtime(hint, streams, threads, nreq, precision="f32"):
    import openvino as ov  # not a dependency: pip install openvino to run the ov: variants

    t = time.perf_counter()
    core = ov.Core()
    m = core.read_model(os.path.join(bundle.local_dir, "model.tflite"))
    cfg = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint}
    if streams:
        cfg["NUM_STREAMS"] = str(streams)
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = str(threads)
    compiled = core.compile_model(m, "CPU", cfg)
    names = [i.get_any_name() for i in compiled.inputs]
    reqs = [compiled.create_infer_request() for _ in range(nreq)]
    print(
        f"  ov compile {time.perf_counter() - t:.2f}s inputs {names}",
        flush=True,
    )
    num_i = [i for i, n in enumerate(names) if "numeric" in n][0]
    txt_i = 1 - num_i
    import queue

    free = queue.SimpleQueue()
    for r in reqs:
        free.put(r)

    def call(nu, to):
        r = free.get()
        try:
            res = r.infer({num_i: nu, txt_i: to}, share_inputs=True)
            return next(iter(res.values())).reshape(-1).copy()
        finally:
            free.put(r)

    pool = ThreadPoolExecutor(nreq) if nreq > 1 else None

    def predict(nu, to):
        starts = range(0, len(nu), B)
        if pool:
            return np.concatenate(
                [f.result() for f in [pool.submit(call, nu[s : s + B], to[s : s + B]) for s in starts]]
            )
        return np.concatenate([call(nu[s : s + B], to[s : s + B]) for s in starts])

    return predict


ref = None
for v in variants:
    if v.startswith("litert"):
        rt = bundle.litert(int(v[-1]))
        out = timed(v, rt.predict, ref)
    elif v.startswith("tensorflow"):
        rt = bundle.tensorflow(4096, True, int(v[-1]))
        out = timed(v, rt.predict, ref)
    elif v.startswith("tfdefault"):
        # TF default threads (issue's limit definition)
        from model.bundle import _load_keras

        mdl = _load_keras(bundle.local_dir)
        from model.runtime import TensorflowRuntime

        rt = TensorflowRuntime(mdl, 4096, True, int(v[-1]))
        out = timed(v, rt.predict, ref)
    else:
        _, hint, streams, threads, nreq = v.split(":")
        p = ov_runtime(hint, int(streams), int(threads), int(nreq))
        out = timed(v, p, ref)
    if ref is None:
        ref = out
