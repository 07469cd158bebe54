"""The training and purification scripts (the shape of ``trl/scripts``): each module has a ``make_parser``
and a ``main(argv)``, runs with ``python -m`` or ``accelerate launch -m``, and is what ``hbd train --recipe``
and the files in the repository's ``recipes/`` folder call.

| module | recipe name (``hbd train --recipe``) |
|---|---|
| `musclelora` | ``musclelora_llama2``, ``musclelora_mistral`` (the Mistral config) |
| `w2sdefense` | ``w2sdefense_llama2`` |
| `fine_purifying` | ``fine_purifying`` |
| `fine_mixing` | ``fine_mixing`` |
| `gradient_control` | ``gradient_control_attack`` |

What they share is split by stage: `utils` (arguments, parsing, the checks made before anything loads,
`run_cli`), `data` (the poisoned splits), `loading` (model, quantisation, PEFT config) and `outputs` (run
records, tables, Hub upload); `purify` holds the purification scripts' common flow, `instruction` the
instruction-tuning runs of `musclelora`.

Example:
    $ accelerate launch -m hf_backdoor_defense.scripts.musclelora --config recipes/configs/demo.yaml
"""
