"""An lrpilot controller (a learned policy or a fixed rule) inside other training
frameworks, one module per framework.

- `lrpilot.integrations.hf`: `LRPilotHFCallback` for a Hugging Face `transformers.Trainer`
  (extra: `pip install 'lrpilot[hf]'`);
- `lrpilot.integrations.lightning`: `LRPilotLightningCallback` for a `lightning.pytorch.Trainer`
  (extra: `pip install 'lrpilot[lightning]'`).

Both are thin front ends over `lrpilot.agents.policy_controller.PolicyController`, the
one implementation `PolicyScheduler` uses too, and share `core.CallbackCore`, which
imports neither framework. Importing this package imports neither
framework; importing one of its modules imports that framework, or raises a
one-line `ConfigError` naming the extra to install.
"""
