"""Editing benchmark: SR, GR, LR and GR-LR curves for every method of the paper (``w2e bench``).

Protocol (METHOD.md sections 6-8)
---------------------------------
- Benchmark: failure groups plus a locality set, from a benchmark file
  (:func:`w2e.formats.benchmark_file.load_benchmark`: uint8 images at the model's input size, labels,
  groups with -1 for the locality set, group names) or an image folder with one folder per
  group named ``<class index>_<name>`` and a ``locality/`` folder, read with the model's own
  preprocessing.
- Editing samples: the images of each group the base model gets wrong, in a seeded order;
  a budget of them is edited (see ``--quick`` below). Every edit starts from the base
  model (edits are stacked only in the sequential protocol, below), and no edit ever writes the
  shared base weights: edits
  are per-thread weight overrides or thread-scoped hooks, and the runner checks after every
  method that the base state dict is bit-identical and no hook is left.
- SR: share of editing samples predicted right after their own edit.
- GR: for one edit, the share of the *other* images of its group predicted right (N - 1
  images, not the authors' biased (correct - 1)/N); mean over the group's edits, then over
  groups.
- LR: share of locality images whose prediction equals the base model's, mean over edits.
- Two stopping points: every edit made by the shared edit loop is scored at the stop rule and
  at the first optimiser step where its editing sample is predicted right (an edit never right
  is scored at the step cap), so mask quality is compared apart from how hard an edit was
  pushed; KE/MEND's single update is both.
- GR-LR curves: each method swept over its knob (w2e/w2e-mean/search/random/KN/SPT: kept fraction rho
  of the site; FT-L1/L2: penalty weight; LoRA: rank; FT, T-Patcher, ROME, KE, MEND: one
  setting). Settings follow METHOD.md section 8, scaled to the model, and are recorded in
  results.json with every method.

Methods (``w2e bench --list``): w2e (the bundle's hypernetwork), w2e-mean (the control for input
dependence: one fixed mask for every edit, the mean of the hypernetwork's outputs over 512
seeded training images), test-time mask search (the model's own search settings), FT,
FT-L1, FT-L2, random masks, KN, SPT - all RMSProp at the model's edit lr, stop at CE <= 0.01 and
a right prediction or 100 steps; T-Patcher (Adam 5e-3, multiplier 10), ROME (Adam 0.01, then
constrained least squares), LoRA (Adam, paper's 1e-4 scaled by the model's edit lr / 2e-5),
KE and MEND (meta-trained here, Adam 1e-3 instead of the paper's 1e-5 so a few hundred
iterations suffice). T-Patcher's memory loss, ROME's key covariance, w2e-mean's average mask,
KE/MEND and the CutMix/PGD hypernetworks use "seen" training images (``--train-data``; the fashion world's
own by default), never benchmark images. Every setting is in results.json; ``--set
METHOD.key=value`` and ``--knob METHOD=v1,v2`` change them. The lifelong editors GRACE
(:mod:`w2e.bench.methods.grace`: a key-value codebook on the [cls] state after one block; knob: the
deferral radius) and WISE (:mod:`w2e.bench.methods.wise`: a routed side memory for one FFN's second
FC; knob: the routing threshold ratio) are in the same registry (:mod:`w2e.bench.methods`: one
module per family, each method with a typed settings dataclass).

Sequential protocol (``--sequential``, :mod:`w2e.bench.sequential`): a seeded stream of editing
samples edited one after another, each edit on the model the previous ones left; retention,
GR over the touched groups, LR and accuracy after T edits, curves against T in report.html.

Ablations: w2e with 1, 2 and 3 samples of a group (masks averaged by
:func:`w2e.engine.masks.ensemble`); mask specificity (IoU of rho = 0.05 masks within and across
groups); hypernetworks meta-trained on CutMix vs PGD pseudo-samples (same short budget).

Paired sign tests: w2e against every other method edit by edit (same editing sample), at the
same rho for methods with a rho knob, otherwise each knob value against w2e at rho 0.05 and
0.1; GR and LR up / down / ties and a two-sided exact sign test, at both stops.

Outputs in ``--out`` (default ``runs/bench-<model>``): ``edits.jsonl`` (one record per edit with
its counts at the stop rule and under ``first_right``, flushed as soon as it is evaluated;
rerunning the same command skips recorded edits, so an interrupted run resumes; the settings
hash includes a protocol version, so records of an older protocol are redone, never mixed in;
records can be re-aggregated with :func:`w2e.bench.protocol.reaggregate` or
:func:`w2e.bench.metrics.summarise_records`), ``results.json`` (``summary`` at the stop rule,
``summary_first_right``, ``sign_tests``), and a self-contained ``report.html`` (plotly.js
inlined): GR-LR curves at both stops and per group, the SR table, the sign tests, the IoU
heatmap, median seconds and steps per edit; a summary table is printed in the terminal.

``--quick``: 1 editing sample in each of the 12 groups with the most failures, GR on at most
32 images of each group, LR on at most 128 locality images, 1-2 values of each knob (rho 0.25
and 0.05, FT-L1 1e-3, FT-L2 0.1, LoRA rank 8), KE/MEND meta-trained for 60 iterations, and
only the IoU ablation (the others with ``--ablations iou,ensemble,pseudo``: ensembles of 1
and 3, CutMix/PGD hypernetworks trained 4 iterations). The full run: 36 editing samples dealt
round-robin over the groups (every group gets one before any gets two, groups with more
failures first; at most 5 per group), GR on at most 160 images per group, LR on at most 320
locality images (seeded subsets; ``all`` lifts a cap), every knob value, KE/MEND 400
iterations, all ablations (CutMix/PGD hypernetworks 30 iterations each).
``--edits-per-group N`` replaces the budget by N samples in every group.

Sharding (:mod:`w2e.bench.sharding`): under ``torchrun`` every process makes every
``world_size``-th edit of each method; the records are gathered after the method, in the
single-process order, and rank 0 alone writes ``edits.jsonl``, ``results.json`` and ``report.html``
(equal to a single-process run's, timings aside). The sequential protocol runs in one process.

Speed: tokens entering the first edited block are computed once for every image of the run
and shared by all methods editing at or after that block; methods that edit later blocks
(T-Patcher, ROME: last block; KE/MEND: last three) derive their cache from it; LoRA, which
changes every MSA, runs batched full forwards from block 0's tokens. Evaluation of one edit
is one batched pass over its group's images and the locality set.
"""
from w2e.bench.context import BenchContext, EditSample, EvalLimits, load_any_benchmark, load_image_folder
from w2e.where.diagnostics import iou_matrix
from w2e.bench.metrics import group_generalization, locality_rate, paired_sign_tests, sign_test, success_rate, summarise_records
from w2e.bench.methods import BenchEdit, Method, MethodSettings, Resources, method_entry, method_names
from w2e.bench.protocol import BenchOptions, run_bench
from w2e.bench.sequential import SequentialOptions, run_sequential

__all__ = [
    "BenchContext", "BenchEdit", "BenchOptions", "EditSample", "EvalLimits", "Method", "MethodSettings", "Resources",
    "SequentialOptions", "group_generalization", "iou_matrix", "load_any_benchmark", "load_image_folder",
    "locality_rate", "method_entry", "method_names", "paired_sign_tests", "run_bench", "run_sequential", "sign_test",
    "success_rate", "summarise_records",
]
