"""Fine-mixing (optionally with E-PUR) of a suspect classifier or adapter.

The script lives in the package, `hf_backdoor_defense.scripts.fine_mixing` (its docstring lists the options and
examples); this file keeps ``accelerate launch recipes/fine_mixing.py ...`` working.
"""

from hf_backdoor_defense.scripts.fine_mixing import main
from hf_backdoor_defense.scripts.utils import run_cli

if __name__ == "__main__":
    run_cli(main)
