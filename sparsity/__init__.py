"""The sparse-training stage: BN-L1 penalty (`bn_l1`), its trainer callback (`callback`), gamma statistics."""
