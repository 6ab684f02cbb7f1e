"""The training substrate: byte-level corpora, the GPT model, the Trainer, fixed LR schedules."""
