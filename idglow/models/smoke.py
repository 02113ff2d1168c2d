"""Load every component of a hub and run each once: the demo's and the GPU check's smoke test."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from idglow.editing import ReferenceBudget, edit
from idglow.faces import detect_faces
from idglow.models.face_torch import align_faces, detect_landmarks, embed_faces
from idglow.models.hub import ModelHub


def _timed(timings: dict[str, float], name: str, run: Callable):
    started = time.perf_counter()
    result = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    timings[name] = round(time.perf_counter() - started, 4)
    return result


def smoke_test(
    hub: ModelHub, portraits: list[Image.Image], budget: ReferenceBudget, size: int = 64, steps: int = 4
) -> dict[str, float]:
    """Seconds to load and to run each component once on ``portraits`` (2-3 reference faces),
    generating at the profile's reference ``budget`` as every stage does."""
    timings: dict[str, float] = {}
    pipeline = _timed(timings, "load_generator_s", hub.generator)
    generator = torch.Generator(device="cpu").manual_seed(0)

    def generate() -> Image.Image:
        return edit(
            pipeline,
            portraits,
            "A group photo of these people",
            budget=budget,
            height=size,
            width=size,
            num_inference_steps=steps,
            generator=generator,
        )

    _timed(timings, "generate_warmup_s", generate)
    output = _timed(timings, "generate_s", generate)
    timings["generated_width"] = float(output.size[0])

    model, processor = _timed(timings, "load_prompt_model_s", hub.prompt_model)
    messages = [
        {"role": "user", "content": [*({"type": "image"} for _ in portraits), {"type": "text", "text": "Describe."}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=portraits, return_tensors="pt").to(hub.device)
    _timed(timings, "prompt_generate_s", lambda: model.generate(**inputs, max_new_tokens=16, do_sample=False))

    clip = _timed(timings, "load_clip_s", hub.clip)
    embeddings = _timed(timings, "clip_images_s", lambda: clip.encode_images([output, *portraits]))
    _timed(timings, "clip_text_s", lambda: clip.encode_texts(["a group photo"]))
    aesthetic = _timed(timings, "load_aesthetic_s", hub.aesthetic)
    with torch.no_grad():
        _timed(timings, "aesthetic_s", lambda: aesthetic(embeddings))

    app = _timed(timings, "load_face_analysis_s", hub.face_analysis)
    faces = _timed(timings, "face_analysis_s", lambda: detect_faces(app, portraits[0]))
    timings["faces_found_in_portrait"] = float(len(faces))
    encoder = _timed(timings, "load_face_encoder_s", hub.face_encoder)
    image = torch.from_numpy(np.asarray(portraits[0].convert("RGB"), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
    image = image[None].to(hub.device).requires_grad_(True)

    def torch_face_path():
        landmarks = detect_landmarks(app, image[0])
        embeddings = embed_faces(encoder, align_faces(image, [0] * len(landmarks), list(landmarks)))
        embeddings.sum().backward()
        return embeddings

    _timed(timings, "torch_face_path_s", torch_face_path)
    timings["torch_face_grad_abs_sum"] = float(image.grad.abs().sum()) if image.grad is not None else 0.0
    return timings
