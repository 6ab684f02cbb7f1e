"""The training substrate: workloads (byte-level corpora and GPT, Hugging Face causal LMs,
text classification, a user's own), `StepRun` that trains any of them interval by
interval, optimizers and fixed LR schedules."""
