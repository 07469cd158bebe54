"""W2SDefense: distil a clean teacher into a LoRA adapter of a backdoored (4-bit) Llama-2.

The script lives in the package, `hf_backdoor_defense.scripts.w2sdefense` (its docstring lists the options and
examples); this file keeps ``accelerate launch recipes/w2sdefense_llama2.py ...`` working.
"""

from hf_backdoor_defense.scripts.utils import run_cli
from hf_backdoor_defense.scripts.w2sdefense import main

if __name__ == "__main__":
    run_cli(main)
