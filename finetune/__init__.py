"""The training engine: fine-tuning, transfer learning and the sparse stage (`finetune.trainer.train`)."""
