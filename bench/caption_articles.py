"""Does the committed toy UNet draw "an emerald disc" as well as "a emerald disc"? (issue 18)

The captions say "an" before a vowel since ``sdd.toy.world.fill``; the committed UNet was trained on
captions that said "a emerald", "a azure". The toy text encoder is a frozen bag of words and "an"
is in its training captions ("an image of a …"), so the article should not matter. This draws
every prompt whose article changed (train and held-out templates × emerald/azure × every shape name
× 6 seeds) both ways with the base toy model and prints the judge's colour-and-shape accuracy.

    .venv/bin/python bench/caption_articles.py
"""

from __future__ import annotations

from sdd.models import load_pipeline
from sdd.toy import DEFAULT_TOY_DIR, world
from sdd.toy.judge import ToyJudge
from sdd.toy.quality import generate_images


def changed_prompts(seeds: int = 6) -> list[tuple[str, str, str, str, int]]:
    """(new prompt, old prompt, colour, shape, seed) for every prompt whose article changed."""
    rows = []
    for template in world.TRAIN_TEMPLATES + world.HELDOUT_TEMPLATES:
        for color, (names, _) in world.COLORS.items():
            for name in names:
                for shape, shape_names in world.SHAPES.items():
                    for shape_name in shape_names:
                        new, old = world.fill(template, c=name, s=shape_name), template.format(c=name, s=shape_name)
                        if new != old:
                            rows += [(new, old, color, shape, seed) for seed in range(seeds)]
    return rows


def accuracy(pipe, judge: ToyJudge, prompts: list[str], rows) -> int:
    color_probs, shape_probs = judge.classify(generate_images(pipe, prompts, [r[4] for r in rows]))
    return sum(judge.colors[c] == r[2] and judge.shapes[s] == r[3]
               for r, c, s in zip(rows, color_probs.argmax(-1).tolist(), shape_probs.argmax(-1).tolist(), strict=True))


def main() -> None:
    pipe = load_pipeline("toy", device="cpu")
    judge = ToyJudge.load(DEFAULT_TOY_DIR / "judge")
    rows = changed_prompts()
    print("| captions | example | correct (colour and shape) |\n|---|---|---|")
    for label, i in (("a (as trained)", 1), ("an (now)", 0)):
        ok = accuracy(pipe, judge, [r[i] for r in rows], rows)
        print(f"| {label} | {rows[0][i]} | {ok}/{len(rows)} = {100 * ok / len(rows):.1f} % |")


if __name__ == "__main__":
    main()
