"""Study: can a tiny prompt model trained on the demo world write dynamic prompts that pass? (issue #14)

Builds the world's prompt model (``idglow.models.world_prompt_model``; cached by its stamp under
``--folder``) and prints the build's wall time and the weights' size, then loads it with the hub's
calls (``AutoModelForImageTextToText`` / ``AutoProcessor.from_pretrained``) and, on groups of
held-out identities, runs ``write_dynamic_prompt`` exactly as inference does (greedy,
``max_new_tokens`` 160) for both tasks. Against the current random tiny prompt model (``write_tiny_vl``
with the demo's seed, 10) it reports:

* the validation pass rate: ``validate_dynamic_prompt`` with the demo's token budget, 512,
  counted by the demo generator's tokenizer (``tiny_qwen_vl.build_tokenizer()``, what the
  generator folder holds); its complement is the fallback rate;
* the share of outputs equal to the descriptive prompt of the people's attributes;
* per-attribute accuracy over the people of the groups, parsed back from "Picture i is a
  <man|woman> with <hair> and <extras>, standing ...": hair colour, glasses, sex (and beard,
  smile); a person the output does not describe counts as wrong;
* the VLM check's people question (``idglow.people_check``) on held-out world pictures of
  nobody, one, two or three people: the share of answers that read as a count and the share
  that give the true count, overall and per true count.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/world_prompt_model.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import tempfile
import time
from pathlib import Path

import torch

from idglow.models import tiny_qwen_vl
from idglow.models.world_prompt_model import (
    TRAINING_FILE,
    WorldPromptConfig,
    build_world_prompt_model,
    heldout_count_examples,
    heldout_groups,
    target_prompt,
)
from idglow.people_check import answer_people_question, parse_people_count
from idglow.prompt_synthesis import write_dynamic_prompt
from idglow.prompts import TASK_PHRASES, describe_person, validate_dynamic_prompt

REPO = Path(__file__).resolve().parents[1]
HAIR = ("a bald head", "black hair", "blond hair", "brown hair", "grey hair", "dark hair")
_PERSON = re.compile(
    r"Picture (\d) is a (man|woman) with (" + "|".join(HAIR) + r")(?: and ([^;.]*?))?, standing", re.IGNORECASE
)


def load(folder: Path):
    """The prompt model as ``ModelHub.prompt_model`` loads it."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    return model.eval(), AutoProcessor.from_pretrained(folder, local_files_only=True)


def truth(attributes: dict) -> dict:
    phrase = describe_person(attributes)
    return {
        "hair": next(h for h in HAIR if h in phrase),
        "glasses": bool(attributes.get("Eyeglasses")),
        "sex": "man" if attributes.get("Male") else "woman",
        "beard": bool(attributes.get("Goatee")),
        "smile": bool(attributes.get("Smiling")),
    }


def parsed(text: str) -> dict[int, dict]:
    people = {}
    for match in _PERSON.finditer(text):
        extras = match.group(4) or ""
        people.setdefault(
            int(match.group(1)),
            {
                "hair": match.group(3).lower(),
                "glasses": "glasses" in extras,
                "sex": match.group(2).lower(),
                "beard": "beard" in extras,
                "smile": "smile" in extras,
            },
        )
    return people


def evaluate(model, processor, groups, counter, budget: int, max_new_tokens: int) -> dict:
    passed = exact = outputs = 0
    correct = {k: 0 for k in ("hair", "glasses", "sex", "beard", "smile")}
    people = 0
    reasons: dict[str, int] = {}
    started = time.time()
    for group in groups:
        portraits = [p.portrait for p in group]
        for task in TASK_PHRASES:
            text = write_dynamic_prompt(model, processor, portraits, task, max_new_tokens)
            check = validate_dynamic_prompt(text, task, len(group), counter(text), budget)
            outputs += 1
            passed += check.ok
            if not check.ok:
                reason = re.sub(r"\d+ tokens", "N tokens", check.reason)
                reasons[reason] = reasons.get(reason, 0) + 1
            exact += text == target_prompt(task, group)
            found = parsed(text)
            for i, person in enumerate(group, start=1):
                people += 1
                want, got = truth(person.attributes), found.get(i)
                for key in correct:
                    correct[key] += bool(got) and got[key] == want[key]
    return {
        "pass_rate": passed / outputs,
        "exact": exact / outputs,
        **{k: v / people for k, v in correct.items()},
        "outputs": outputs,
        "seconds_per_output": (time.time() - started) / outputs,
        "reasons": reasons,
    }


def evaluate_counting(model, processor, examples, pixels: int) -> dict:
    """The people question on ``examples``: answered (a count), correct, and correct per true count."""
    answered, by_count = 0, {}
    for example in examples:
        count = parse_people_count(answer_people_question(model, processor, example.image, pixels))
        answered += count is not None
        right, total = by_count.get(example.people, (0, 0))
        by_count[example.people] = (right + (count == example.people), total + 1)
    correct = sum(right for right, _ in by_count.values())
    return {
        "answered": answered / len(examples),
        "correct": correct / len(examples),
        "by_count": {n: f"{right}/{total}" for n, (right, total) in sorted(by_count.items())},
    }


def folder_megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, default=REPO / "var" / "studies" / "world_prompt_model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override a WorldPromptConfig field"
    )
    parser.add_argument("--groups", type=int, default=40, help="held-out groups (each written for both tasks)")
    parser.add_argument("--baseline-groups", type=int, default=10)
    parser.add_argument("--count-examples", type=int, default=120, help="held-out pictures for the people question")
    parser.add_argument("--budget", type=int, default=512, help="the profile's prompt_token_budget")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args()
    torch.set_num_threads(1)

    fields = {f.name: f.type for f in dataclasses.fields(WorldPromptConfig)}
    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = (float if "float" in fields[key] else int)(value)
    config = WorldPromptConfig(**{**dataclasses.asdict(WorldPromptConfig()), **overrides, "seed": args.seed})
    started = time.time()
    built = build_world_prompt_model(
        args.folder,
        args.seed,
        config,
        progress=lambda row: (
            print(f"step {row['step']} loss {row['loss']:.3f} (response {row['response_loss']:.3f})", flush=True)
            if row["step"] % 20 == 0
            else None
        ),
    )
    recorded = json.loads((args.folder / TRAINING_FILE).read_text())
    print(f"build: {'built' if built else 'reused'} in {time.time() - started:.1f} s; recorded {recorded}")
    print(f"weights: {folder_megabytes(args.folder):.2f} MB (safetensors)")

    generator_tokenizer = tiny_qwen_vl.build_tokenizer()  # the demo generator's tokenizer
    counter = lambda text: len(generator_tokenizer(text).input_ids)  # noqa: E731
    groups = heldout_groups(config, args.groups)
    sizes = [len(g) for g in groups]
    print(f"held-out groups: {len(groups)} (sizes 1/2/3: {sizes.count(1)}/{sizes.count(2)}/{sizes.count(3)})")

    trained = evaluate(*load(args.folder), groups, counter, args.budget, args.max_new_tokens)
    pictures = heldout_count_examples(config, args.count_examples)
    counting = evaluate_counting(*load(args.folder), pictures, config.count_pixels)
    with tempfile.TemporaryDirectory() as folder:
        tiny_qwen_vl.write_tiny_vl(Path(folder), 10)  # the random twin (the demo's prompt model before #14)
        baseline = evaluate(
            *load(Path(folder)), groups[: args.baseline_groups], counter, args.budget, args.max_new_tokens
        )
        baseline_counting = evaluate_counting(
            *load(Path(folder)), pictures[: args.baseline_groups], config.count_pixels
        )

    keys = ("pass_rate", "exact", "hair", "glasses", "sex", "beard", "smile")
    columns = "outputs | pass rate | fallback | = descriptive | hair | glasses | sex | beard | smile | s/output"
    print(f"\n| prompt model | {columns} |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, result in (("random tiny (today's demo)", baseline), ("world-trained", trained)):
        values = [f"{result[k]:.2f}" for k in keys]
        print(
            f"| {name} | {result['outputs']} | {values[0]} | {1 - result['pass_rate']:.2f} | "
            + " | ".join(values[1:])
            + f" | {result['seconds_per_output']:.2f} |"
        )
    for name, result in (("random tiny", baseline), ("world-trained", trained)):
        print(f"{name} fallback reasons: {result['reasons']}")
    print("\n| people question | pictures | answered with a count | true count | by true count (right/asked) |")
    print("| --- | --- | --- | --- | --- |")
    for name, result, asked in (
        ("random tiny", baseline_counting, min(args.baseline_groups, len(pictures))),
        ("world-trained", counting, len(pictures)),
    ):
        print(f"| {name} | {asked} | {result['answered']:.2f} | {result['correct']:.2f} | {result['by_count']} |")
    group, task = groups[0], "group_fusion"
    print("\nexample (held-out group 0, group_fusion):")
    print("  wanted:", target_prompt(task, group))
    print("  wrote: ", write_dynamic_prompt(*load(args.folder), [p.portrait for p in group], task, args.max_new_tokens))


if __name__ == "__main__":
    main()
