"""CycleAlign on HH-RLHF: train, save, report.

    python examples/hh_rlhf.py --config examples/configs/cpu_demo.yaml
    accelerate launch --config_file examples/accelerate_configs/zero3.yaml \
        examples/hh_rlhf.py --config examples/configs/zero3_full.yaml

The same as the installed command ``cyclealign train --config ...`` (and ``accelerate launch
-m cyclealign train ...``): arguments come from a YAML file (``--config``) and the command
line, which wins; they fill the script's arguments (data and ranker), ``CycleAlignConfig``
and TRL's ``ModelConfig`` (see ``cyclealign.scripts.train``). The run ends with a report
(``report.md``, ``report.json``, ``metrics.png``) and the final model in ``output_dir``, and
prints where each one is.
"""

from __future__ import annotations

from cyclealign.scripts.train import main

if __name__ == "__main__":
    main()
