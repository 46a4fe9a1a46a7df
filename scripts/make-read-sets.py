# Builds the two single-turn "read the tag" sets of training.md section 5.8 from `ergo synth
# --split train` output: crop.jsonl (the stage-2 crop, 64 vision tokens) and full.jsonl (the
# whole image, for a one-pass model whose processor caps it at 121 tokens). The answer is the
# code itself, so the held-out loss per digit says whether the model reads (chance: ln 10).
import json, sys
root = sys.argv[1]
qs = [json.loads(l) for l in open(f"{root}/test_questions.jsonl")]
sft = [json.loads(l) for l in open(f"{root}/sft.jsonl")]
with open(f"{root}/crop.jsonl", "w") as fc, open(f"{root}/full.jsonl", "w") as ff:
    for q, s in zip(qs, sft):
        question = q["text"].split("\n")[0] + " Answer with the code."
        code = q["synth"]["code"]
        crop = s["messages"][3]["content"][0]["image_url"]["url"]
        for f, img in ((fc, crop), (ff, q["image"])):
            f.write(json.dumps({"messages": [
                {"role": "user", "content": [{"type": "image", "image": img},
                                             {"type": "text", "text": question}]},
                {"role": "assistant", "content": code}]}) + "\n")
print(len(qs), "items")
