"""``python -m train``: regenerate the per-lesion model weights and the model bundle.

python -m train --data DRAC_ROOT --out RUN_DIR
torchrun --nproc_per_node=4 -m train --data DRAC_ROOT --out RUN_DIR
python -m train.export RUN_DIR        # rebuild RUN_DIR/model from finished members
"""
