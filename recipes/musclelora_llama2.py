"""MuScleLoRA (or the LoRA baseline) on a (4-bit) Llama-2 / Mistral trained on poisoned data.

The script lives in the package, `hf_backdoor_defense.scripts.musclelora` (its docstring lists the options and
examples); this file keeps ``accelerate launch recipes/musclelora_llama2.py ...`` working.
"""

from hf_backdoor_defense.scripts.musclelora import main
from hf_backdoor_defense.scripts.utils import run_cli

if __name__ == "__main__":
    run_cli(main)
