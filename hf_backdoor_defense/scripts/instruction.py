"""The instruction-tuning path of the MuScleLoRA recipes (``--task instruction``).

A causal LM with a MuScleLoRA (or LoRA) ``CAUSAL_LM`` adapter is trained by `MuScleLoRASFTTrainer` (TRL's
`SFTTrainer` plus gradient alignment) on prompt/response pairs poisoned by a generative attack
(`TargetedRefusal` or `SentimentSteering`: the trigger in the prompt, the attacker's answer as response),
with a clean reference set drawn from another split. The loss covers the response tokens only.

The final evaluation is honest about what a small model can show:

* ``clean_loss_before`` / ``clean_loss``: the mean response-token loss on the clean evaluation pairs before
  and after training (lower is better; the adapter starts as the identity, so "before" is the base model),
  with the matching token accuracy;
* ``asr``: `generative_asr` of greedy generations (``max_new_tokens``) on the triggered evaluation prompts;
* ``clean_behaviour_rate``: the same keyword test on the clean prompts, the rate at which the model shows
  the attacker's behaviour without any trigger (compare ASR with it, not with zero).

Example:
    $ accelerate launch recipes/musclelora_llama2.py --config recipes/configs/instruction_demo.yaml
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from hf_backdoor_defense.scripts.loading import build_peft_config, load_model_and_tokenizer
from hf_backdoor_defense.scripts.outputs import RESULTS_FILE, run_metrics
from hf_backdoor_defense.scripts.utils import convert_training_arguments

PLAIN_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
N_SAMPLES = 3  # generations of each kind kept in results.json


def resolve_prompt_format(prompt_format: str, tokenizer) -> str:
    """``"chat"`` or ``"plain"``: ``"auto"`` picks chat when the tokenizer has a chat template."""
    if prompt_format == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "prompt_format='chat' but the tokenizer has no chat template: use --prompt_format plain (or auto)."
        )
    return prompt_format


def to_sft_dataset(pairs, prompt_format: str):
    """``prompt`` / ``response`` pairs as TRL prompt-completion examples (conversational for ``"chat"``)."""

    def convert(example):
        if prompt_format == "chat":
            return {
                "prompt": [{"role": "user", "content": example["prompt"]}],
                "completion": [{"role": "assistant", "content": example["response"]}],
            }
        return {"prompt": PLAIN_TEMPLATE.format(prompt=example["prompt"]), "completion": example["response"]}

    return pairs.map(convert, remove_columns=pairs.column_names, desc="Formatting for SFT")


def generation_inputs(prompts: list[str], tokenizer, prompt_format: str) -> tuple[list[str], bool]:
    """The texts to generate from (formatted exactly as in training) and whether to add special tokens."""
    if prompt_format == "chat":
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts]
        return texts, False  # the template writes its own special tokens
    return [PLAIN_TEMPLATE.format(prompt=p) for p in prompts], True


def generate(model, tokenizer, prompts: list[str], prompt_format: str, *, max_new_tokens: int,
             batch_size: int, max_length: int) -> list[str]:
    """Greedy responses (new tokens only, decoded) to ``prompts``; left padding and truncation (a long prompt
    keeps its end, where the response starts), no gradients."""
    import torch

    texts, special = generation_inputs(prompts, tokenizer, prompt_format)
    device = next(model.parameters()).device
    sides = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = tokenizer.truncation_side = "left"
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                                  truncation=True, max_length=max_length, add_special_tokens=special).to(device)
                generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                           use_cache=True, pad_token_id=tokenizer.pad_token_id)
                new = generated[:, batch["input_ids"].shape[1]:]
                outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
        model.train(was_training)
    return outputs


def evaluate_generative(model, tokenizer, test, attack, script_args, prompt_format: str) -> dict:
    """ASR on the triggered prompts of ``test`` and the behaviour rate on its clean prompts."""
    from hf_backdoor_defense.metrics import generative_asr

    common = dict(max_new_tokens=script_args.max_new_tokens, batch_size=script_args.eval_batch_size,
                  max_length=script_args.max_length)
    triggered = attack.triggered_prompts(test)["prompt"]
    clean = test["prompt"]
    triggered_out = generate(model, tokenizer, triggered, prompt_format, **common)
    clean_out = generate(model, tokenizer, clean, prompt_format, **common)
    return {
        "behaviour": attack.behaviour,
        "asr": generative_asr(triggered_out, attack.behaviour),
        "clean_behaviour_rate": generative_asr(clean_out, attack.behaviour),
        "n_clean": len(clean),
        "n_triggered": len(triggered),
        "samples": {
            "triggered": [{"prompt": p, "generation": g} for p, g in zip(triggered[:N_SAMPLES], triggered_out)],
            "clean": [{"prompt": p, "generation": g} for p, g in zip(clean[:N_SAMPLES], clean_out)],
        },
    }


def train_one_instruction(name, peft_type, gradient_alignment, output_dir, script_args, model_args,
                          training_args, data, attack):
    """Train one CAUSAL_LM adapter with `MuScleLoRASFTTrainer`, save it, evaluate; (trainer, metrics or None)."""
    from accelerate import PartialState
    from peft import get_peft_model
    from transformers import set_seed

    from hf_backdoor_defense.atomic import write_json_atomic
    from hf_backdoor_defense.trainers.musclelora_sft import MuScleLoRASFTConfig, MuScleLoRASFTTrainer

    state = PartialState()
    run_model_args = copy.copy(model_args)
    run_model_args.peft_type = peft_type
    if peft_type == "lora":
        run_model_args.scales = run_model_args.multiscale_alpha = run_model_args.multiscale_target_modules = None
    args = convert_training_arguments(
        training_args, MuScleLoRASFTConfig, output_dir=output_dir, gradient_alignment=gradient_alignment,
        push_to_hub=False, max_length=script_args.max_length, completion_only_loss=True, packing=False,
    )
    set_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(run_model_args, "instruction", training_args=args)
    model = get_peft_model(model, build_peft_config(run_model_args, model, "instruction"))
    if state.is_main_process:
        print(f"[{name}] ", end="")
        model.print_trainable_parameters()
    prompt_format = resolve_prompt_format(script_args.prompt_format, tokenizer)
    reference = data["reference"]
    if gradient_alignment and args.reference_size is not None and args.reference_size < len(reference):
        # Tokenise only the examples the trainer will keep (it would draw the same-size subset itself).
        reference = reference.shuffle(seed=args.reference_seed).select(range(args.reference_size))
    with state.main_process_first():
        train = to_sft_dataset(data["train"], prompt_format)
        reference = to_sft_dataset(reference, prompt_format)
        clean_eval = to_sft_dataset(data["test"], prompt_format)
    trainer = MuScleLoRASFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=clean_eval,
        reference_dataset=reference if gradient_alignment else None,
        processing_class=tokenizer,
    )
    before = trainer.evaluate()
    start = time.perf_counter()
    train_output = trainer.train()
    train_seconds = time.perf_counter() - start
    after = trainer.evaluate()
    trainer.save_model(output_dir)  # the adapter (safetensors), written by the main process
    metrics = None
    if state.is_main_process:
        tokenizer.save_pretrained(output_dir)
        scores = evaluate_generative(trainer.model, tokenizer, data["test"], attack, script_args, prompt_format)
        metrics = run_metrics(
            name, peft_type, gradient_alignment, output_dir, trainer, train_output, train_seconds,
            state.num_processes, prompt_format=prompt_format,
            clean_loss_before=before["eval_loss"], clean_loss=after["eval_loss"],
            clean_token_accuracy_before=before.get("eval_mean_token_accuracy"),
            clean_token_accuracy=after.get("eval_mean_token_accuracy"), **scores,
        )
        write_json_atomic(Path(output_dir) / RESULTS_FILE, metrics)
        print(f"[{name}] clean loss {before['eval_loss']:.3f} -> {after['eval_loss']:.3f}  "
              f"ASR {100 * scores['asr']:.1f}% (clean prompts {100 * scores['clean_behaviour_rate']:.1f}%)",
              flush=True)
    state.wait_for_everyone()
    return trainer, metrics


def format_instruction_table(rows: list[dict]) -> str:
    """A Markdown table of instruction runs: clean loss, behaviour rate on clean prompts, ASR."""
    from hf_backdoor_defense.reporting import markdown_table, percent

    return markdown_table(
        ["run", "clean loss (before -> after)", "behaviour on clean prompts", "ASR"],
        [[r["run"], f"{r['clean_loss_before']:.3f} -> {r['clean_loss']:.3f}", percent(r["clean_behaviour_rate"]),
          percent(r["asr"])] for r in rows])
