"""Red team: a backdoored LoRA adapter trained with Gradient Control.

The script lives in the package, `hf_backdoor_defense.scripts.gradient_control` (its docstring lists the options and
examples); this file keeps ``accelerate launch recipes/gradient_control_attack.py ...`` working.
"""

from hf_backdoor_defense.scripts.gradient_control import main
from hf_backdoor_defense.scripts.utils import run_cli

if __name__ == "__main__":
    run_cli(main)
