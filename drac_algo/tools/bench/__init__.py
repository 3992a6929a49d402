"""Throughput, memory and agreement of three ways to run the D4 TTA ensemble, side by side.

    python -m drac_algo.bench --json bench.json               # CPU, 1024 x 1024, recipe models
    python -m drac_algo.bench --bundle /opt/ml/model --images "DRAC/.../b. Testing Set"
    python -m drac_algo.bench --device cuda --repeats 5 --json bench.json
    python -m drac_algo.bench --precision bf16,fp32 --methods naive,engine --no-train
    python -m drac_algo.bench --quick --json /tmp/bench.json   # smoke test: seconds

Every method runs the same networks (one per lesion class: a trained bundle, or the recipes'
architectures with seeded random weights), on the same images, with the same views (the D4 group
by default) and the same averaging (the mean of the sigmoid probabilities over views, then over
a class's members), the same pre- and post-processing, on the same machine:

- ``naive``: one view at a time, float32, contiguous tensors, no autocast: the loop a user
  writes by hand (the method's own predict script, plus TTA);
- ``ttach``: ``ttach.SegmentationTTAWrapper`` with its D4 transforms and ``merge_mode="mean"``
  around ``network + sigmoid`` (so it averages probabilities like the others), float32; the row
  is skipped, saying so, when ttach is not installed;
- ``engine``: this project's :class:`drac_algo.engine.predictor.Predictor` as it is (views batched
  ``--views-per-batch`` at a time, ``--precision`` autocast, channels-last where the engine
  applies it); ``--precision bf16,fp32`` adds a row ``engine-fp32``; ``--engine-module`` times
  a patched copy of the engine instead.

Reported per row: images per second (images / the median wall time of ``--repeats`` timed
passes over the images, after ``--warmup`` untimed passes); peak memory; achieved GFLOP/s (the
FLOPs of one forward of each network, counted with ``torch.utils.flop_counter.FlopCounterMode``
on the meta device (convolutions and matrix products), times the views, times images per
second) and that as a fraction of the device's peak in the row's precision; the agreement of
its masks with the naive float32 masks over all images (pixels that agree, Dice per class, the
largest and mean probability difference), so that a faster path that changes the answer shows.

Ensembles: ``--members N`` random-weight networks per class (default 1). Members run one after
the other, so speed ratios do not depend on N, but every member stays loaded, so memory does:
``python -m train`` makes 5 per class by default (the recipes' 5 folds x 1 seed), and the memory
target is judged on a run with that many. Each row also gets the time for the 65-image DRAC test
set with that default ensemble, scaled from the row's time by FLOPs.

Peak: the faster of a large ``torch.matmul`` and a channels-last 3 x 3 convolution in that
precision. Both, because on x86 CPUs float32 ``torch.matmul`` runs in MKL, which reaches less
than half of what oneDNN's convolutions reach on AMD CPUs: with the matmul alone, float32
networks would run at "over 100 % of peak".

Timing under load: all rows are built first, then warmed up, then timed pass by pass in turn
(the order rotating each round), so a drift in background load hits every row alike; the
1-minute load average is recorded per pass and the table warns when it exceeded the cores.
A loaded machine still hurts batch-1 rows most (their many small OpenMP regions wait on
descheduled threads): compare rows from a quiet machine only.

Memory. On the GPU: ``torch.cuda.max_memory_allocated`` (and reserved) after
``reset_peak_memory_stats``. On the CPU: the process's resident-set high-water mark
(``VmHWM``), reset through ``/proc/self/clear_refs`` once the networks are built, so it covers
the warm-up and the timed passes; ``peak RSS`` is the whole process (Python, torch libraries,
weights, working memory: what a container's memory limit sees), ``working`` is the peak minus
the resident size at the reset. Each row runs in its own fresh process (``--isolate``, the
default) because a process keeps what its allocator and oneDNN cached for an earlier method:
in one process a second method would be measured on top of the first one's leftovers.
``--quick`` runs in-process (each process pays seconds of imports); its memory figures are then
only indicative.

Training (``--train``): images per second of one task's training step (forward, the recipe's
loss, backward, the recipe's optimizer step) at ``--train-size``, in float32 and with mixed
precision (bf16 autocast on the CPU; bf16, else fp16 with a gradient scaler, on CUDA), each
with and without channels-last; one fresh process per variant, one after the other.

The engine's precision: ``--precision auto`` is the Predictor's own (and ``process.py``'s)
``auto``: bf16 where the device computes it natively (Ampere+ GPUs, CPUs with AVX512-BF16 or
AMX), else fp16 on CUDA and fp32 on the CPU. Its views per batch: the Predictor's default (all
8 on CUDA, 1 on the CPU) unless ``--views-per-batch`` says otherwise. The table states what each
row actually ran: the dtype and memory layout seen by the first convolution with more than one
input channel in the first network.

The modules, in the order a run uses them: :mod:`~drac_algo.tools.bench.cli` (the options; imports
no torch, so ``--help`` is instant), :mod:`~drac_algo.tools.bench.config` (``BenchConfig``,
``--quick``), :mod:`~drac_algo.tools.bench.run` (the whole run), :mod:`~drac_algo.tools.bench.plan`
(the
networks and images), :mod:`~drac_algo.tools.bench.probes` (FLOPs, peak, memory, layout, the
machine), :mod:`~drac_algo.tools.bench.runners` (the three methods),
:mod:`~drac_algo.tools.bench.workers`
(one process per row, interleaved passes), :mod:`~drac_algo.tools.bench.train_step`,
:mod:`~drac_algo.tools.bench.agreement`, :mod:`~drac_algo.tools.bench.targets` and
:mod:`~drac_algo.tools.bench.report` (the tables). This package stays out of the inference image
(``.dockerignore``).
"""
