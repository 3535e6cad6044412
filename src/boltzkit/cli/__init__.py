"""The `boltzkit` command line (typer + rich).

    boltzkit targets
    boltzkit sample TARGET --sampler NAME --budget N_ENERGY_EVALS --seed S --out DIR
                    [--set key=value ...] [--preset NAME] [--n-samples N]
                    [--target-param key=value ...] [--reference PATH] [--tensorboard DIR]
                    [--device D]
    boltzkit sample --resume RUN_DIR [--budget N]
    boltzkit evaluate RUN_DIR [--reference PATH]
    boltzkit reference TARGET [--n-samples N] [--temperature T] [--set key=value ...]
                       [--device D]
    boltzkit experiment NAME [--set key=value ...] --out DIR [--executor serial|local|ray]
                        [--workers N] [--address HOST:PORT] [--device cpu|cuda|cuda:N]
    boltzkit report RUN_DIR... [--out report.html]
    boltzkit bench [--quick] [--target T ...] [--sampler S ...] [--budget N] [--out DIR]
                   [--executor serial|local|ray] [--workers N] [--device D]
    boltzkit demo

Bad names, keys and values exit with code 2 and a message listing the valid ones; a file or
file system that fails (corrupt run files, a full disk, a read-only file system) exits with code 1
and one line naming the path and the cause; no traceback. Ctrl-C (SIGINT) and SIGTERM stop a run
cleanly, say where it stopped and how to resume it, and exit with 130 and 143.
"""

from boltzkit.cli import listing, runs, studies  # noqa: F401 - each registers its commands
from boltzkit.cli.common import app, count

__all__ = ["app", "count"]
