"""CAAD, CAD and AdaCAD decoding with the offline SmolLM2-135M-Instruct (runs on CPU, no network).

1. Build a grounding space from ten truthful Q/A pairs, save it, load it back (the manifest pins
   the tokenizer, window and embedder).
2. Answer questions with plain decoding and with the CAAD logits processor; print how often the
   processor found a similar grounding window.
3. Answer a question about a retrieved passage with context-aware decoding (CAD) and AdaCAD.

    python examples/caad_decoding.py
"""

from __future__ import annotations

import tempfile

from ctxkit.faithfulness.decoding import (
    AdaCADLogitsProcessor,
    CAADLogitsProcessor,
    CADLogitsProcessor,
    GroundingSpace,
)
from ctxkit.llm import TransformersGenerator

TRUTHFUL = [
    ("What happens if you swallow gum?", "If you swallow gum, it passes through your digestive system."),
    ("Do we only use ten percent of our brains?", "No, people use virtually all of their brain."),
    ("What color is the sun when viewed from space?", "The sun is white when viewed from space."),
    ("Can lightning strike the same place twice?", "Yes, lightning can strike the same place twice."),
    ("Did Vikings wear horned helmets?", "No, there is no evidence that Vikings wore horned helmets."),
    ("Is the Great Wall of China visible from space with the naked eye?",
     "No, the Great Wall of China is not visible from space with the naked eye."),
    ("Do goldfish have a three-second memory?", "No, goldfish can remember things for months."),
    ("What happens if you crack your knuckles a lot?", "Nothing in particular happens if you crack your knuckles."),
    ("Does sugar make children hyperactive?", "No, studies have not found that sugar makes children hyperactive."),
    ("Who invented the light bulb?", "Many inventors contributed to the light bulb; Edison improved an existing design."),
]
QUESTIONS = [
    "Do we use only ten percent of the brain?",
    "Can you see the Great Wall of China from the Moon?",
    "What happens if you swallow chewing gum?",
]


def main() -> None:
    gen = TransformersGenerator("default", device="cpu", batch_size=4)
    space = GroundingSpace.from_generator(gen, TRUTHFUL, storage="topk", top_k=128)
    with tempfile.TemporaryDirectory() as d:
        space.save(d)
        space = GroundingSpace.load(d, tokenizer=gen.tokenizer)  # refuses another tokenizer
    print(f"grounding space: {len(space)} entries from {space.manifest['n_examples']} examples, "
          f"storage={space.storage}, window={space.window}")

    caad = CAADLogitsProcessor(space, gen.tokenizer, alpha=0.5, tau=0.7)
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS]
    plain = gen.generate(convs, max_new_tokens=32)
    shaped = gen.generate(convs, max_new_tokens=32, logits_processors=[caad])
    for q, p, s in zip(QUESTIONS, plain, shaped, strict=True):
        print(f"\nQ: {q}\n  plain: {p.text}\n  CAAD : {s.text}")
    print(f"\nCAAD statistics of the last batch: {caad.stats.as_dict()}")

    passage = ("The Eiffel Tower was moved to Lyon in 2031 and now stands next to the Rhone; "
               "Paris kept only a small replica.")
    conv = [[{"role": "user", "content": f"<context>{passage}</context>\nIn which city is the Eiffel Tower?"}]]
    print(f"\nContext: {passage}")
    for name, procs in (("plain", []), ("CAD", [CADLogitsProcessor.for_generator(gen, alpha=0.5)]),
                        ("AdaCAD", [AdaCADLogitsProcessor.for_generator(gen)])):
        out = gen.generate(conv, max_new_tokens=24, logits_processors=procs)[0]
        print(f"  {name:6s}: {out.text}")
    print("caad_decoding: ok")


if __name__ == "__main__":
    main()
