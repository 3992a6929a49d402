"""The tools around the product: evaluation with the challenge metric (:mod:`.evaluate`), the
quickstart, the plain baseline, phantom data (:mod:`.synth`), the benchmark (:mod:`.bench`) and
the ablation (:mod:`.ablate`).

May import any stage; no stage imports a tool. Not in the container.
"""
