"""The Gymnasium registration of `lrpilot/LRControl-v0` (imports gymnasium, not torch)."""

ENV_ID = "lrpilot/LRControl-v0"


def register_envs() -> None:
    """Register `lrpilot/LRControl-v0` with Gymnasium (idempotent); the environment's
    module is imported only when `gymnasium.make` builds one."""
    import gymnasium

    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point="lrpilot.env.lr_env:LRControlEnv")
