"""Where does "the blue ... moves to ..." break: in the text encoder's states, or in the DiT? (docs/toy-world.md,
"Why the held-out combinations fail".)

`role_swap.py` found that the shipped base leaves a blue object still when told it "moves to" another (0 of 30),
though it moves blue objects left, right and down and moves every other colour "to" things. The encoder's
states of the action words hardly depend on the subject's colour (cosines 0.89-0.99 between "the blue circle
moves to ..." and the same with red, green, white or yellow), so the question is which states the DiT cannot
use. Same 30 items and noise as `role_swap.py`, the text states given to the pipeline directly
(``prompt_embeds``), in four forms:

- ``original``: the prompt's own states (must reproduce role_swap.py's 0 of 30: a check of this path);
- ``rest from a trained colour``: every token's state from the same sentence with the subject's colour word
  replaced by a colour trained with "moves to" (red, green or yellow, not the other object's), except the
  subject's colour word itself, kept blue;
- ``blue from a trained action``: the prompt's states, except the subject's colour word, whose state comes from
  "the blue <shape> moves left" (blue moves left in training);
- ``both``: the two replacements together.

    python docs/toy/role_patch.py OUT.json      # 155 s on a 2-core CPU
"""

import json
import sys
import time

import numpy as np
import torch

import fglens as fg
from fglens.eval.stats import bootstrap_ci
from fglens.toy.experiment import item_seed
from fglens.toy.load import CALL
from fglens.toy.score import as_video, follows
from fglens.toy.text import MAX_TOKENS


def _states(pipe, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        emb, _ = pipe.encode_prompt([prompt], do_classifier_free_guidance=False, max_sequence_length=MAX_TOKENS,
                                    device="cpu")
    return emb


def _forms(pipe, item) -> dict[str, torch.Tensor]:
    objs, ins = item.scene.objects, item.instruction
    a, b = objs[ins.target], objs[ins.other]
    trained = next(c for c in ("red", "green", "yellow") if c != b.colour)
    own = _states(pipe, item.prompt)
    words = item.prompt.split()
    assert words[1] == "blue" and len(pipe.tokenizer(item.prompt).input_ids) == len(words) + 1, item.prompt
    rest = _states(pipe, item.prompt.replace("the blue", f"the {trained}", 1))
    blue_moving = _states(pipe, f"the blue {a.shape} moves left")
    forms = {"original": own, "rest from a trained colour": rest.clone(), "blue from a trained action": own.clone()}
    forms["rest from a trained colour"][:, 1] = own[:, 1]
    forms["blue from a trained action"][:, 1] = blue_moving[:, 1]
    forms["both"] = forms["rest from a trained colour"].clone()
    forms["both"][:, 1] = blue_moving[:, 1]
    return forms


def main(path: str, n: int = 30) -> dict:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("role_swap", Path(__file__).with_name("role_swap.py"))
    role_swap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(role_swap)
    t0 = time.time()
    pipe = fg.toy.pipeline("base")
    items = role_swap._items("approach", n)["held-out combination"]
    rows: dict[str, list[dict]] = {}
    for it in items:
        for form, emb in _forms(pipe, it).items():
            gen = torch.Generator().manual_seed(item_seed(it, 0))
            video = np.asarray(pipe(image=it.image, prompt_embeds=emb, generator=gen, **CALL).frames[0])
            ok, reason = follows(as_video(video), it)
            rows.setdefault(form, []).append({"id": it.id, "prompt": it.prompt, "follows": float(ok), "reason": reason})
    summary = {f: [round(float(x), 3) for x in bootstrap_ci(np.array([r["follows"] for r in rs]), seed=0)]
               for f, rs in rows.items()}
    res = {"model": "base (shipped)", "items": len(items), "summary": summary, "rows": rows,
           "seconds": round(time.time() - t0, 1)}
    print(json.dumps(summary, indent=1), flush=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main(sys.argv[1])
