"""Where `segvae run`'s steps run: `local` (child processes here, the default) or `slurm` (SLURM jobs).
One file per launcher, each a `Launcher` with its `LauncherConfig` (base.py says what they share)."""
from __future__ import annotations

import importlib

from harness.launchers.base import Launcher, LauncherConfig, Step

# name -> (module, launcher class, config class); imported on use
LAUNCHERS = {"local": ("harness.launchers.local", "LocalLauncher", "LocalConfig"),
             "slurm": ("harness.launchers.slurm", "SlurmLauncher", "SlurmConfig")}


def launcher_classes(name: str) -> tuple[type[Launcher], type[LauncherConfig]]:
    module, launcher, config = LAUNCHERS[name]
    mod = importlib.import_module(module)
    return getattr(mod, launcher), getattr(mod, config)


def launcher_config(name: str, config_file=None, **flags) -> LauncherConfig:
    """The config of launcher `name`: its file's values (if any), then the flags that were given."""
    from harness.errors import UserError

    given = {k: v for k, v in flags.items() if v not in (None, [])}
    _, config_cls = launcher_classes(name)
    if name == "local":
        if config_file or given:
            opts = ["--slurm-config"] * bool(config_file) + ["--" + k.replace("_", "-") for k in given]
            raise UserError(f"{', '.join(opts)} only apply to --launcher slurm (the local launcher runs every "
                            f"step here)")
        return config_cls()
    config = config_cls.from_file(config_file) if config_file else config_cls()
    return config.updated(**given)


__all__ = ["LAUNCHERS", "Launcher", "LauncherConfig", "Step", "launcher_classes", "launcher_config"]
