"""Prompts for each group and task: static templates, VLM-written dynamic prompts with
validation and fallback (section 3.2), and the prompt preference set for aligning the VLM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TASK_PHRASES = {
    "group_fusion": "together as adults, as they look in the pictures",
    "age_transformed": "as young children of about six years old, keeping each child recognisable as that person",
}
_COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
_CHILD_WORDS = re.compile(r"\b(child|children|kid|kids|boy|girl|toddler|young)\b", re.IGNORECASE)

BADCASES = ("attribute leakage", "lighting inconsistency", "detail omission")


def picture_list(n: int) -> str:
    names = [f"Picture {i}" for i in range(1, n + 1)]
    return names[0] if n == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def static_prompt(task: str, n_subjects: int) -> str:
    """One fixed template per task and subject count (a group: two or more people)."""
    if task not in TASK_PHRASES:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_PHRASES)}")
    if n_subjects < 2:
        raise ValueError(f"a group photo holds two or more people, got n_subjects={n_subjects}")
    count = _COUNT_WORDS.get(n_subjects, str(n_subjects))
    return (
        f"A natural group photo of the {count} people from {picture_list(n_subjects)}, "
        f"{TASK_PHRASES[task]}, standing side by side and looking at the camera, soft natural light."
    )


def dynamic_instruction(task: str, n_subjects: int) -> str:
    """What the prompt model is asked, with the portraits shown as Picture 1..N before it."""
    return (
        f"You see {n_subjects} portraits, {picture_list(n_subjects)}. Write one instruction for an image "
        f"editing model that composes these people into a single group photo {TASK_PHRASES[task]}. "
        "Name every person by their picture number, bind each person's hair, clothing and accessories to "
        "that person, say where each one stands, and set the lighting and how they interact. "
        "Answer with the instruction only."
    )


@dataclass(frozen=True)
class PromptCheck:
    ok: bool
    reason: str = ""


def validate_dynamic_prompt(text: str, task: str, n_subjects: int, token_count: int, token_budget: int) -> PromptCheck:
    """A dynamic prompt must name each subject, fit the text encoder, and (Task 2) ask for children."""
    if not text or not text.strip():
        return PromptCheck(False, "empty output")
    if token_count > token_budget:
        return PromptCheck(False, f"{token_count} tokens exceed the budget of {token_budget}")
    missing = [
        i
        for i in range(1, n_subjects + 1)
        if not re.search(rf"\b(picture|person|subject)\s*{i}\b", text, re.IGNORECASE)
    ]
    if missing:
        return PromptCheck(False, "does not name " + ", ".join(f"Picture {i}" for i in missing))
    if task == "age_transformed" and not _CHILD_WORDS.search(text):
        return PromptCheck(False, "does not ask for children")
    return PromptCheck(True)


def describe_person(attributes: dict[str, bool]) -> str:
    """A short appearance phrase from CelebA attributes (the binding the paper's badcases lack)."""
    who = "man" if attributes.get("Male") else "woman"
    hair = next(
        (
            phrase
            for key, phrase in (
                ("Bald", "a bald head"),
                ("Black_Hair", "black hair"),
                ("Blond_Hair", "blond hair"),
                ("Brown_Hair", "brown hair"),
                ("Gray_Hair", "grey hair"),
            )
            if attributes.get(key)
        ),
        "dark hair",
    )
    extras = [
        phrase
        for key, phrase in (
            ("Eyeglasses", "glasses"),
            ("Goatee", "a beard"),
            ("Mustache", "a moustache"),
            ("Wearing_Hat", "a hat"),
            ("Wearing_Earrings", "earrings"),
            ("Wearing_Necktie", "a necktie"),
            ("Smiling", "a smile"),
        )
        if attributes.get(key)
    ]
    return f"a {who} with {hair}" + (" and " + ", ".join(extras) if extras else "")


_PLACES = ("on the left", "in the middle", "on the right")


def descriptive_prompt(task: str, people: list[dict[str, bool]]) -> str:
    """A descriptive, attribute-bound prompt: each picture's person, their place, light, interaction."""
    n = len(people)
    places = _PLACES if n == 3 else ("on the left", "on the right") if n == 2 else _PLACES[1:2]
    bound = "; ".join(
        f"Picture {i} is {describe_person(p)}, standing {places[min(i - 1, len(places) - 1)]}"
        for i, p in enumerate(people, start=1)
    )
    subject = (
        "as young children of about six, each keeping their own features" if task == "age_transformed" else "as adults"
    )
    return (
        f"A group photo of the {_COUNT_WORDS.get(n, n)} people from {picture_list(n)} {subject}. {bound}. "
        "They stand close together with arms around each other's shoulders, in warm late-afternoon light "
        "that falls on every face from the same side, in a park."
    )


def barren_prompt(n_subjects: int) -> str:
    return f"A photo of {_COUNT_WORDS.get(n_subjects, n_subjects)} people."


def badcase_for(people: list[dict[str, bool]], index: int) -> str:
    """Which failure a preference pair targets, in turn over the three badcases; attribute leakage
    only where the people differ in a bindable attribute (hair colour, glasses, sex)."""
    keys = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Eyeglasses", "Male")
    differ = any(len({bool(p.get(k)) for p in people}) > 1 for k in keys)
    badcase = BADCASES[index % 3]
    return BADCASES[1] if badcase == BADCASES[0] and not differ else badcase
