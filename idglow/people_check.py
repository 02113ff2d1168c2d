"""The VLM check of stage 1 (section 3.4.4: pairs are filtered "using Vision-Language Models and
task-specific metrics"; docs/method.md, Eq. 9): the prompt model is asked how many people the
chosen image shows, and a pair whose chosen image does not show the N people its prompt
describes is dropped with that reason.

The check is on where the prompt model can answer: ``people_check_verdict`` looks at all the
answers of a run, and when fewer than ``MIN_ANSWERED`` of them read as a count (a model with
random weights, say), or when it counts fewer than ``MIN_AGREEMENT`` of the run's real group
photos right (their number of people is known), the check vetoes nothing and says why. An
answer that is not a count never vetoes a pair on its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from idglow.prompt_synthesis import prompt_portrait

PEOPLE_QUESTION = "How many people are in this photo? Answer with one word."
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
MIN_ANSWERED = 0.5  # the share of answers that must read as a count for the check to veto anything
MIN_AGREEMENT = 0.8  # the share of real group photos (people known) it must count right to veto anything


def people_question_chat(processor) -> str:
    """The chat text of the question about one image, ending where the model answers."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PEOPLE_QUESTION}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def check_image(image: Image.Image, pixels: int) -> Image.Image:
    """The image as the model sees it for the check: about ``pixels`` pixels, sides multiples of 32."""
    return prompt_portrait(image.convert("RGB"), pixels)


def answer_people_question(model, processor, image: Image.Image, pixels: int, max_new_tokens: int = 6) -> str:
    """The model's raw answer (greedy) to ``PEOPLE_QUESTION`` about ``image``."""
    inputs = processor(text=[people_question_chat(processor)], images=[check_image(image, pixels)], return_tensors="pt")
    output = model.generate(**inputs.to(model.device), max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0].strip()


def parse_people_count(answer: str) -> int | None:
    """The count an answer gives (its first word: a number word or digits), or None."""
    words = re.findall(r"[a-z]+|\d+", answer.lower())
    if not words:
        return None
    first = words[0]
    if first.isdigit():
        return int(first)
    if first in ("no", "none", "nobody"):
        return 0
    return COUNT_WORDS.index(first) if first in COUNT_WORDS else None


@dataclass(frozen=True)
class PeopleCheckVerdict:
    """What the check decided for a run: whether it could answer, how often it was right where the
    truth is known, and why it is or is not applied."""

    able: bool
    answered: int  # answers that read as a count
    asked: int
    known: int  # chosen images whose number of people is known (real group photos)
    agreed: int  # of those, the ones whose count was the truth
    reason: str

    @property
    def agreement(self) -> float:
        return self.agreed / self.known if self.known else float("nan")


def people_check_verdict(
    counts: Sequence[int | None], known: Sequence[tuple[int | None, int]] = ()
) -> PeopleCheckVerdict:
    """Whether a run's answers let the check veto: at least ``MIN_ANSWERED`` of ``counts`` are
    counts, and on the chosen images whose number of people is known (``known``: (count, truth)
    pairs) the count is the truth at least ``MIN_AGREEMENT`` of the time (an answer that is not
    validated where it can be is not trusted where it cannot)."""
    answered, asked = sum(count is not None for count in counts), len(counts)
    agreed = sum(count == truth for count, truth in known)
    tally = (answered, asked, len(known), agreed)
    if not asked:
        return PeopleCheckVerdict(False, *tally, "no chosen image to check")
    if answered < MIN_ANSWERED * asked:
        return PeopleCheckVerdict(
            False, *tally, f"the prompt model gave a count for {answered} of {asked} images: not applied"
        )
    if known and agreed < MIN_AGREEMENT * len(known):
        return PeopleCheckVerdict(
            False,
            *tally,
            f"the prompt model's count was right for {agreed} of {len(known)} real group photos "
            f"(under {MIN_AGREEMENT:.0%}): not applied",
        )
    checked = f"right for {agreed} of {len(known)} real group photos" if known else "no real group photo to check it on"
    return PeopleCheckVerdict(True, *tally, f"applied: {answered} of {asked} answers read as a count, {checked}")


def people_check_reason(count: int | None, n_subjects: int) -> str | None:
    """The veto reason for one pair, or None when the chosen image passes (or the answer was no count)."""
    if count is None or count == n_subjects:
        return None
    people = "person" if count == 1 else "people"
    return f"VLM check: the chosen image shows {count} {people}, the prompt describes {n_subjects}"
